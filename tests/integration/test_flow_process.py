"""A flow process's start and stop (issue 10): one consumer contract with its durable, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from connectors.bootstrap import bootstrap_site
from connectors.settings import Tuning
from schemas import names
from schemas.streams import ACK_WAIT_S, MAX_DELIVER
from testkit.clients import mongo_client
from testkit.support import LOGS, FlowProcess, bootstrap_local_sites, connect_site, flow_env, unique_site, wait_for

MODULE = "dataflows.inbox_mirror"


class Site:
    """A fresh test site on the s1 server: streams and durables (default settings), its own database."""

    def __init__(self, servers: dict[str, Any], nc: Client) -> None:
        self.servers = servers
        self.nc = nc
        self.site = unique_site()
        self.flows: list[FlowProcess] = []

    def flow(self, module: str = MODULE, *, processes: int = 1, **env: str) -> FlowProcess:
        flow = FlowProcess(module, flow_env(self.servers, self.site, **env), processes=processes)
        log_path(flow).unlink(missing_ok=True)
        self.flows.append(flow)
        return flow.start()

    async def pulling(self, durable: str = names.INBOX_WORKER_DURABLE, stream: str = "") -> None:
        """Until a flow has a pull request waiting on `durable`: it started and consumes."""
        js = self.nc.jetstream()

        async def waiting() -> bool:
            info = await js.consumer_info(stream or names.inbox_stream(self.site), durable)
            return (info.num_waiting or 0) > 0

        await wait_for(waiting, timeout=60, interval=0.2, what=f"a pull on {durable}")


def log_path(flow: FlowProcess, index: int = 0) -> Path:
    return LOGS / f"{flow.name}-{index}.log"


def exit_code(flow: FlowProcess, index: int = 0, timeout: float = 60) -> int | None:
    """The process's exit status once it exited by itself within `timeout`, else None (it is still running)."""
    try:
        return flow.procs[index].wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture
async def site(servers: dict[str, Any]) -> AsyncIterator[Site]:
    nc = await connect_site(servers, "s1")
    test_site = Site(servers, nc)
    await bootstrap_local_sites(nc, [test_site.site])
    try:
        yield test_site
    finally:
        for flow in test_site.flows:
            flow.stop()
        js = nc.jetstream()
        for stream in (names.rooms_stream, names.outbox_stream, names.inbox_stream, names.dlq_stream):
            await js.delete_stream(stream(test_site.site))
        await nc.close()
        with mongo_client(servers) as mongo:
            mongo.drop_database(f"chat_{test_site.site}")


@pytest.mark.parametrize(
    ("variable", "value", "field", "actual"),
    [("CHATFED_MAX_DELIVER", "15", "max_deliver", str(MAX_DELIVER)), ("CHATFED_ACK_WAIT_S", "45", "ack_wait_s", str(ACK_WAIT_S))],
    ids=["max_deliver", "ack_wait"],
)
async def test_a_flow_refuses_a_durable_with_another_delivery_contract(site: Site, variable: str, value: str, field: str, actual: str) -> None:
    flow = site.flow(**{variable: value})
    code = await asyncio.to_thread(exit_code, flow, 0, 60)
    log = log_path(flow).read_text()
    assert code == 2, f"the flow did not refuse the durable (exit {code}):\n{log}"
    durable = f"{names.inbox_stream(site.site)}/{names.INBOX_WORKER_DURABLE}"
    assert f"durable {durable} has {field}={actual} but {variable}={value}" in log
    assert "Traceback" not in log

    # once bootstrap gave the durables the flow's settings, the same flow starts
    await bootstrap_site(site.nc, site.site, [site.site], federated=False, tuning=Tuning(**{field: int(value)}))
    again = site.flow(**{variable: value})
    await site.pulling()
    again.assert_alive()


async def test_sigterm_stops_a_flow_with_one_line_and_status_zero(site: Site) -> None:
    flow = site.flow(processes=2)
    await site.pulling()

    def started(index: int) -> bool:  # its last start-up line: the SIGTERM handler is in place, the store ready
        path = log_path(flow, index)
        return path.exists() and "indexes ready" in path.read_text()

    await wait_for(lambda: started(0) and started(1), timeout=60, what="both processes past their start-up")
    for proc in flow.procs:
        proc.send_signal(signal.SIGTERM)
    for index in range(2):
        code = await asyncio.to_thread(exit_code, flow, index, 30)
        log = log_path(flow, index).read_text()
        assert code == 0, f"exit {code}:\n{log}"
        stops = [line for line in log.splitlines() if "stopped on SIGTERM" in line]
        assert len(stops) == 1, log
        assert "redelivered" in stops[0]
        for noise in ("Traceback", "BytewaxRuntimeError", "panicked", "KeyboardInterrupt"):
            assert noise not in log, log
    flow.procs.clear()


async def test_a_flow_that_fails_for_real_still_logs_its_traceback(site: Site) -> None:
    flow = site.flow(CHATFED_MONGO_DB="no/such$db")  # pymongo refuses the name: a fault of ours, not an outage
    code = await asyncio.to_thread(exit_code, flow, 0, 60)
    log = log_path(flow).read_text()
    assert code not in (None, 0), log
    assert "Traceback" in log and "InvalidName" in log
    assert "cannot start yet" not in log  # never retried
