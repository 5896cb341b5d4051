"""Helpers for integration tests: isolated test sites, flow processes, draining, publishing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from connectors.bootstrap import provision_sites, verify_site
from connectors.settings import ElasticSettings, Tuning, elastic_variables, mongo_variables, nats_variables
from dataflows.search_sync.indexes import SearchIndexes, install
from schemas import names
from schemas.envelope import OutboxEvent, encode_envelope
from schemas.events import InnerEvent, encode_event
from testkit.clients import connect_nats, es_client, es_search_sync_settings, es_settings, mongo_settings, nats_settings

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / ".local" / "logs" / "tests"


def unique_site(prefix: str = "t") -> str:
    """A fresh site id, so a test's streams, durables and indexes are its own."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def connect_site(servers: Mapping[str, Any], site: str, *, role: str = "operator") -> Client:
    """Connect to `site`'s NATS as its operator (manages the site) or, with role="service", as the flows' user."""
    return await connect_nats(nats_settings(servers, site, role=role))


async def bootstrap_local_sites(client: Client, sites: list[str], *, tuning: Tuning | None = None) -> None:
    """All `sites`' streams on one server, sources without an external API (FINDINGS: quick tests).

    `tuning`: the flows' settings the durables must match (`max_deliver`, `ack_wait`); the defaults without it.
    """
    # every OUTBOX and source durable first: a source naming one that does not exist yet stays in error until the
    # server's next retry, which a loaded machine may not reach within the verification's wait
    await provision_sites({site: client for site in sites}, sites, federated=False, tuning=tuning)
    for site in sites:
        await verify_site(client.jetstream(), site, sites, tuning=tuning)


async def bootstrap_federated(servers: Mapping[str, Any]) -> None:
    """Every site of `servers` on its own server, bootstrapped federated (its own domain, sourcing over leafnodes), and
    its search views installed (as `chatfed bootstrap` does: search_sync's own user may not create them)."""
    sites = list(servers["sites"])
    clients = {site: await connect_site(servers, site) for site in sites}
    try:
        await provision_sites(clients, sites)
        for site, client in clients.items():
            await verify_site(client.jetstream(), site, sites)
    finally:
        for client in clients.values():
            await client.close()
    es = es_client(servers)
    try:
        for site in sites:
            install(es, SearchIndexes.for_site(ElasticSettings(), site))
    finally:
        es.close()


async def retune(js: JetStreamContext, stream: str, durable: str, tuning: Tuning) -> None:
    """Give one durable the flows' `max_deliver` and `ack_wait` of `tuning` (a flow refuses a durable that differs)."""
    config = (await js.consumer_info(stream, durable)).config
    config.max_deliver = tuning.max_deliver
    config.ack_wait = tuning.ack_wait_s
    await js.add_consumer(stream, config)


def envelope_bytes(event: InnerEvent, *, event_type: str, site: str, dest: str, timestamp: int) -> bytes:
    envelope = OutboxEvent(type=event_type, site_id=site, dest_site_id=dest, payload=encode_event(event), timestamp=timestamp)
    return encode_envelope(envelope)


async def publish(js: JetStreamContext, subject: str, data: bytes, msg_id: str | None = None) -> None:
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await js.publish(subject, data, headers=headers)


async def wait_drained(js: JetStreamContext, stream: str, durable: str, timeout: float = 60) -> None:
    """Until the durable has nothing pending and nothing awaiting an ack."""
    deadline = time.monotonic() + timeout
    info: Any = None
    while time.monotonic() < deadline:
        info = await js.consumer_info(stream, durable)
        if info.num_pending == 0 and info.num_ack_pending == 0 and (info.num_redelivered or 0) >= 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{stream}/{durable} not drained after {timeout}s: pending={info.num_pending} ack_pending={info.num_ack_pending}")


async def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll an (async or sync) predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def flow_env(servers: Mapping[str, Any], site: str, *, nats_site: str = "s1", **overrides: str) -> dict[str, str]:
    """Environment for running a flow of test `site`, whose streams live on `nats_site`'s server.

    The flow connects as `nats_site`'s service user, whose permissions cover that site's streams
    only; a test site with its own id on another site's server (unique_site) runs as that server's
    operator instead.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFED_")}
    env.update(
        CHATFED_SITE_ID=site,
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        **mongo_variables(mongo_settings(servers, names.mongo_database(site))),
        **nats_variables(nats_settings(servers, nats_site, role="service" if site == nats_site else "operator")),
        **elastic_variables(es_search_sync_settings(servers, site) if site == nats_site else es_settings(servers)),
    )
    env.update(overrides)
    return env


class FlowProcess:
    """A dataflow run as real processes (`python -m bytewax.run`), `processes` of them in a cluster."""

    def __init__(self, module: str, env: Mapping[str, str], *, processes: int = 1, workers: int = 1, name: str = "") -> None:
        self.module = module
        self.env = dict(env)
        self.processes = processes
        self.workers = workers
        self.name = name or f"{module.rsplit('.', 1)[-1]}-{env.get('CHATFED_SITE_ID', '')}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> FlowProcess:
        LOGS.mkdir(parents=True, exist_ok=True)
        addresses = ""
        if self.processes > 1:
            ports = [_free_port() for _ in range(self.processes)]
            addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
        for index in range(self.processes):
            args = [sys.executable, "-m", "bytewax.run", self.module, "-w", str(self.workers)]
            if addresses:
                args += ["-i", str(index), "-a", addresses]
            log = open(LOGS / f"{self.name}-{index}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs.append(
                subprocess.Popen(args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        return self

    def assert_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise AssertionError(f"{self.name}-{index} exited with {proc.returncode}; see {LOGS}/{self.name}-{index}.log")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (the flows map it to a clean stop), then SIGKILL if they linger."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def kill(self) -> None:
        """kill -9: no cleanup at all."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()

    def __enter__(self) -> FlowProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

