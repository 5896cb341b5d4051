"""Where a bench's MongoDB-protocol store runs (issue 12, item 5), and what its processes cost.

`store_servers(None)` is the dev servers (`services.py info`); `store_servers("sqlite" | "postgresql")` starts a
private set (NATS and FerretDB on that backend, plus its PostgreSQL; testkit/private_servers.py) on free ports, so
one run measures both backends side by side and the dev servers stay untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import process_cpu_s, tree_cpu_s
from testkit.private_servers import private_servers
from testkit.support import REPO

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Store:
    servers: dict[str, Any]  # `services.py info` of the set
    run_dir: Path  # its pid files

    @property
    def backend(self) -> str:
        return str(self.servers.get("mongo_backend", "sqlite"))

    def _pid(self, name: str) -> int:
        return int((self.run_dir / f"{name}.pid").read_text())

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of FerretDB and (on that backend) of PostgreSQL with its backends."""
        out = {"ferretdb": process_cpu_s(self._pid("ferretdb"))}
        if self.backend == "postgresql":
            out["postgres"] = tree_cpu_s(self._pid("postgres"))
        return out

    def psql(self, sql: str) -> str:
        """`sql` run by psql in FerretDB's PostgreSQL database (a Mongo database is a schema of it)."""
        psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
        argv = [str(psql), self.servers["postgres_url"], "-qAt", "-v", "ON_ERROR_STOP=1"]
        return subprocess.run(argv, input=sql, capture_output=True, text=True, check=True).stdout


def dev_servers() -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "services.py"), "info"], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


@contextmanager
def store_servers(backend: str | None) -> Iterator[Store]:
    """The dev servers (`None`), or a private NATS + FerretDB on `backend`, stopped (and its data dropped) at the end."""
    dev = dev_servers()
    if backend is None:
        yield Store(dev, Path(os.environ.get("CHATFED_STATE_DIR") or REPO / ".local") / "run")  # as scripts/localservers/layout.py
        return
    with private_servers(f"bench-{backend}", own=("nats", "ferretdb"), shared=dev, backend=backend) as own:
        yield Store(own.info, own.state / "run")


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}
