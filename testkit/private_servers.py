"""A private set of chatfed servers for outage tests: NATS hub and sites, FerretDB, Elasticsearch.

`scripts/services.py` started with its own state dir (CHATFED_STATE_DIR, under .local/private/) and free ports,
so a test may stop and start these servers while other test runs keep using the shared ones. `info` has the
shape of `services.py info` (the `servers` fixture), so every test helper takes it unchanged. A set may own only
some kinds of server ("nats", "ferretdb", "es") and use the shared ones for the rest (services.py's overrides).
Its FerretDB stores on CHATFED_MONGO_BACKEND's backend, or on `backend` (the benches compare them); with
PostgreSQL the set has a `postgres` server too.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testkit.support import REPO

PRIVATE = REPO / ".local" / "private"
SITES = ("s1", "s2")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


# the shared servers' default ports (NATS 14220-14262, ES 19200 and 19300, FerretDB 37017-37018) and those this
# checkout's own shared servers use (CHATFED_PORT_BASE, CHATFED_ES_PORT, CHATFED_FERRET_PORT): never picked even while
# one of them is down (an outage test of another run)
def _reserved() -> set[int]:
    base = int(os.environ.get("CHATFED_PORT_BASE") or 14220)
    es = int(os.environ.get("CHATFED_ES_PORT") or 19200)
    ferret = int(os.environ.get("CHATFED_FERRET_PORT") or 37017)
    ports = {*range(14220, 14263), 19200, 19300, 37017, 37018}
    return ports | set(range(base, base + 50)) | {es, es + 100, ferret, ferret + 1}


def _free_block(offsets: tuple[int, ...], rnd: random.Random) -> int:
    """A base port whose `base + offset` ports are all free, below the ephemeral range: while a server is down, a
    client reconnecting to it from an ephemeral port that equals the server's can connect to itself and hold the port."""
    high = min(_ephemeral_low(), 60_000) - max(offsets) - 1
    reserved = _reserved()
    for _ in range(200):
        base = rnd.randrange(20_000, high)
        if all(base + offset not in reserved and _free(base + offset) for offset in offsets):
            return base
    raise RuntimeError(f"no free ports for offsets {offsets}")


KINDS = ("nats", "ferretdb", "es")


class PrivateServers:
    """One private set; `up()` starts it (Elasticsearch takes 20-40 s), `close()` stops it and drops its data.

    `own`: the kinds of server of its own; the others are `shared`'s (the `servers` fixture), never stopped here.
    """

    def __init__(
        self, name: str = "servers", own: tuple[str, ...] = KINDS, shared: dict[str, Any] | None = None, backend: str | None = None
    ) -> None:
        self.state = PRIVATE / f"{name}-{uuid.uuid4().hex[:6]}"
        rnd = random.Random()
        nats_offsets = (0, 1, 2, *(10 + i for i in range(len(SITES))), *(30 + i for i in range(len(SITES))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFED_") and k != "MONGO_URI"}
        env.update(
            CHATFED_STATE_DIR=str(self.state),
            CHATFED_SITES=" ".join(SITES),
            CHATFED_PORT_BASE=str(_free_block(nats_offsets, rnd)),
            CHATFED_ES_PORT=str(_free_block((0, 100), rnd)),
            CHATFED_FERRET_PORT=str(_free_block((0, 1, 2), rnd)),  # FerretDB, its debug port, its PostgreSQL's socket name
        )
        if backend := backend or os.environ.get("CHATFED_MONGO_BACKEND"):
            env["CHATFED_MONGO_BACKEND"] = backend
        if "nats" not in own or set(own) - set(KINDS) or (set(own) != set(KINDS) and shared is None):
            raise ValueError(f"own={own}: nats and any of {KINDS[1:]}; the shared servers' info for the others")
        if "ferretdb" not in own:  # the shared one, as its user (services.py info passes these on)
            env["CHATFED_MONGO_URI"] = shared["mongo_uri"]  # type: ignore[index]
            env["CHATFED_MONGO_USER"] = shared["mongo_user"]  # type: ignore[index]
            env["CHATFED_MONGO_PASSWORD"] = shared["mongo_password"]  # type: ignore[index]
        if "es" not in own:  # the shared one, as its operator (services.py info passes these on)
            env["CHATFED_ES_URL"] = shared["es_url"]  # type: ignore[index]
            env["CHATFED_ES_USER"] = shared["es_user"]  # type: ignore[index]
            env["CHATFED_ES_PASSWORD"] = shared["es_password"]  # type: ignore[index]
            env["CHATFED_ES_CA_CERTS"] = shared["es_ca"]  # type: ignore[index]
        self.names = ["nats-hub", *(f"nats-{site}" for site in SITES), *(k for k in own if k != "nats")]
        self.env = env
        self.info: dict[str, Any] = {}

    def _run(self, *args: str, timeout: float = 600) -> str:  # Elasticsearch may take 6 minutes to start (servers.py)
        out = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(args[1:])} ({self.state}): exit {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def services(self, *args: str) -> str:
        return self._run(sys.executable, str(REPO / "scripts" / "services.py"), *args)

    def up(self) -> PrivateServers:
        PRIVATE.mkdir(parents=True, exist_ok=True)
        self.state.mkdir()
        for path in (PRIVATE, self.state):  # Elasticsearch runs as its own user when we are root: let it through
            path.chmod(0o755)
        self.info = json.loads(self.services("info"))
        if "ferretdb" in self.names and self.info["mongo_backend"] == "postgresql":  # known before `up`: `close` stops it
            self.names.insert(self.names.index("ferretdb"), "postgres")
        self.services("up")
        return self

    def stop(self, server: str) -> None:
        """Stop one server (`nats-s1`, `ferretdb`, `es`, ...) of this set and wait until it is gone."""
        assert server in self.names, f"{server} is not one of this set's own servers {self.names}"
        self.services("down", server)

    def start_again(self, server: str) -> None:
        """Start `server` alone and wait until it is ready (`up` would also start any other stopped one)."""
        self.services("start", server)

    @contextmanager
    def outage(self, server: str, seconds: float) -> Iterator[None]:
        """Stop `server`, run the body, keep it down for `seconds` in all, bring it back whatever happens."""
        self.stop(server)
        down_at = time.monotonic()
        try:
            yield
            time.sleep(max(0.0, seconds - (time.monotonic() - down_at)))  # the outage's length is the point
        finally:
            self.start_again(server)
            print(f"\n{server}: down {time.monotonic() - down_at:.1f} s (including the restart)")

    def close(self) -> None:
        """Stop every server of the set; keep its logs (and configs), drop its data."""
        try:
            self.services("down", *self.names)
        finally:
            shutil.rmtree(self.state / "data", ignore_errors=True)


@contextmanager
def private_servers(
    name: str, own: tuple[str, ...] = KINDS, shared: dict[str, Any] | None = None, backend: str | None = None
) -> Iterator[PrivateServers]:
    """A started private set, stopped at the end."""
    servers = PrivateServers(name, own, shared, backend)
    try:
        yield servers.up()
    finally:
        servers.close()
