"""Run the three dataflows of every site as background processes, with pid files and one log folder."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import msgspec

from chatfed_cli.topology import REPO, Topology
from connectors.settings import elastic_variables, mongo_variables, nats_variables
from schemas.names import FLOWS, flow_module

RUN_DIR: Final = REPO / ".local" / "run" / "flows"
LOG_DIR: Final = REPO / ".local" / "logs" / "flows"


class FlowProc(msgspec.Struct, frozen=True, kw_only=True):
    flow: str
    site: str
    index: int
    pid: int

    @property
    def name(self) -> str:
        return f"{self.flow}-{self.site}-{self.index}"


def flow_env(topology: Topology, site: str) -> dict[str, str]:
    """The environment a flow of `site` runs with: the caller's, plus where `site`'s servers are."""
    desc = topology.sites[site]
    env = dict(os.environ)  # an external site's NATS credentials may come from the caller's CHATFED_NATS_*
    env |= {
        "CHATFED_SITE_ID": site,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        **mongo_variables(topology.mongo(site)),
        **nats_variables(desc.service()),
        **elastic_variables(topology.search_sync_elastic(site)),
    }
    return env


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a live flow process (not gone, not a zombie, not a reused pid naming another program)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    if state in {"Z", "X"}:  # exited, not yet reaped
        return False
    return not cmdline or b"bytewax.run" in cmdline  # cmdline reads empty for a moment while a process starts


def running() -> list[FlowProc]:
    """Flow processes started by `up` that are still alive."""
    procs: list[FlowProc] = []
    for path in sorted(RUN_DIR.glob("*.pid")) if RUN_DIR.exists() else []:
        proc = msgspec.json.decode(path.read_bytes(), type=FlowProc)
        if _pid_alive(proc.pid):
            procs.append(proc)
        else:
            path.unlink()
    return procs


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start(topology: Topology, *, processes: int = 1, flows: tuple[str, ...] = FLOWS) -> list[FlowProc]:
    """Start every flow of every site that is not already running; `processes` per flow (a cluster)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    alive = {(proc.flow, proc.site) for proc in running()}
    started: list[FlowProc] = []
    for site in topology.site_ids:
        env = flow_env(topology, site)
        for flow in flows:
            if (flow, site) in alive:
                continue
            addresses = ";".join(f"127.0.0.1:{port}" for port in _free_ports(processes)) if processes > 1 else ""
            for index in range(processes):
                args = [sys.executable, "-m", "bytewax.run", flow_module(flow)]
                if addresses:
                    args += ["-i", str(index), "-a", addresses]
                log = open(LOG_DIR / f"{flow}-{site}-{index}.log", "ab")  # noqa: SIM115 - the child owns it
                child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                log.close()
                proc = FlowProc(flow=flow, site=site, index=index, pid=child.pid)
                (RUN_DIR / f"{proc.name}.pid").write_bytes(msgspec.json.encode(proc))
                started.append(proc)
    return started


def stop(*, timeout: float = 20, site: str | None = None, flow: str | None = None) -> list[FlowProc]:
    """SIGTERM every matching flow process (the flows map it to a clean stop), SIGKILL after `timeout`."""
    return terminate([p for p in running() if (site is None or p.site == site) and (flow is None or p.flow == flow)], timeout)


def terminate(procs: list[FlowProc], timeout: float = 20) -> list[FlowProc]:
    """Stop these processes, whatever their pid files say (e.g. those `start` just launched)."""
    victims = [p for p in procs if _pid_alive(p.pid)]
    for proc in victims:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile: nothing to stop
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in victims:
        while _pid_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        (RUN_DIR / f"{proc.name}.pid").unlink(missing_ok=True)
    return victims
