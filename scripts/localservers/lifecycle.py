"""Start a server and wait until it is ready, adopt a running one, stop processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .credentials import write_private
from .layout import CONF, HOST, LOGS, RUN, Layout, ServiceError, W
from .pki import client_context
from .processes import http_get, own_processes, pid_alive, read_pid, tcp_open
from .servers import Server, es_java_home

STOP_WAIT_S = 30.0


def start(server: Server) -> None:
    """Start one server and wait until it is ready; raises ServiceError pointing at its log."""
    if server.port is not None and tcp_open(HOST, server.port, timeout=0.3):
        raise ServiceError(
            f"{server.name}: port {server.port} is in use by a process this checkout did not start; "
            "stop it or move the ports (CHATFED_PORT_BASE, CHATFED_ES_PORT, CHATFED_FERRET_PORT)"
        )
    for d in (CONF, LOGS, RUN):
        d.mkdir(parents=True, exist_ok=True)
    server.prepare()
    server.pid_file.unlink(missing_ok=True)
    write_private(server.fingerprint_file, server.fingerprint())  # holds the config: passwords
    env = {**os.environ, **server.env}
    if server.name == "es":
        env["ES_JAVA_HOME"] = es_java_home()
        env.pop("JAVA_HOME", None)
    as_user = {"user": server.user, "group": server.user, "extra_groups": []} if server.user else {}
    with server.log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {server.name}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 (our own argv)
            server.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in our process group: ^C on run.sh leaves it to `down`
            env=env,
            cwd=server.cwd,
            **as_user,  # type: ignore[arg-type]
        )
    try:
        _wait_ready(server, proc)
    except ServiceError:
        # stopped, not left booting: a retried start would find it holding its data (Elasticsearch's node lock)
        proc.kill()
        terminate(own_processes({server.name: server.marker}), {server.name: server.marker})
        raise


def _wait_ready(server: Server, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + server.ready_timeout
    if server.daemon_pid_file:
        # `elasticsearch -d` returns once the node has started (or failed), leaving the JVM's pid behind
        try:
            code = proc.wait(timeout=server.ready_timeout)
        except subprocess.TimeoutExpired:
            code = None
        pid = read_pid(server.daemon_pid_file)
        if code != 0 or pid is None:
            raise server.failure(f"launcher exited with {code} and no running process")
        exited: Callable[[], bool] = lambda: not pid_alive(pid, server.marker)  # noqa: E731
    else:
        pid = proc.pid
        exited = lambda: proc.poll() is not None  # noqa: E731
    server.pid_file.write_text(f"{pid}\n")
    while not server.ready():
        if exited():
            raise server.failure("exited during start-up")
        if time.monotonic() > deadline:
            raise server.failure(f"not ready after {server.ready_timeout:.0f} s (stopped)")
        time.sleep(0.2)
    server.setup()


def wait_for_leafnodes(layout: Layout, timeout: float = 30.0) -> None:
    """Wait until every local site server is connected to the hub as a leafnode."""
    want = set(layout.local_sites)
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(f"https://{HOST}:{layout.hub_monitor_port}/leafz", context=client_context())
        have = {leaf.get("name") for leaf in json.loads(body).get("leafs") or []} if status == 200 else set()
        if want <= have:
            return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"nats-hub: sites {sorted(want - have)} did not join as leafnodes within {timeout:.0f} s; "
                "see .local/logs/nats-hub.log and .local/logs/nats-<site>.log"
            )
        time.sleep(0.2)


def adopt(server: Server) -> int | None:
    """Record the pid of a running server of this checkout whose pid file was lost or overwritten."""
    found = list(own_processes({server.name: server.marker}))
    if len(found) != 1:
        return None
    server.pid_file.write_text(f"{found[0]}\n")
    return found[0]


def started_as_now(server: Server) -> bool:
    """Whether the running server was started with the configuration the environment now asks for."""
    started_with = server.fingerprint_file.read_text() if server.fingerprint_file.exists() else ""
    return started_with == server.fingerprint()


def terminate(victims: dict[int, str], markers: dict[str, str], signals: dict[str, int] | None = None) -> None:
    """Signal the processes (SIGTERM unless `signals` names another), SIGKILL those still alive after STOP_WAIT_S, and
    wait for them to be gone."""
    for pid, name in victims.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, (signals or {}).get(name, signal.SIGTERM))
    deadline = time.monotonic() + STOP_WAIT_S
    while any(pid_alive(p, markers[n]) for p, n in victims.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, name in victims.items():
        if pid_alive(pid, markers[name]):
            print(f"{name:<{W}} did not stop within {STOP_WAIT_S:.0f} s: SIGKILL pid {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    reap_deadline = time.monotonic() + 5  # give init a moment to reap them: no <defunct> left in ps
    while any(Path(f"/proc/{p}").exists() for p in victims) and time.monotonic() < reap_deadline:
        time.sleep(0.1)
