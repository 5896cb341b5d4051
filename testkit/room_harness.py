"""A running room_worker on a fresh test site, with helpers to send commands and read what it published."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pymongo import MongoClient

from connectors.mongo import Document, ensure_indexes
from schemas import names, subjects
from testkit.clients import mongo_client
from testkit.support import (
    FlowProcess,
    bootstrap_local_sites,
    connect_site,
    flow_env,
    unique_site,
    wait_drained,
    wait_for,
)


@dataclass
class Event:
    """One message read back from a stream: subject, dedup id, envelope and decoded inner event."""

    subject: str
    msg_id: str
    envelope: dict[str, Any]
    inner: dict[str, Any]


def user(account: str, site: str, **extra: str) -> dict[str, Any]:
    return {"_id": f"u-{account}", "account": account, "siteId": site, **extra}


@dataclass
class RoomHarness:
    """A room_worker flow for `site`, whose remote peer is `other` (both on the s1 server)."""

    servers: dict[str, Any]
    site: str = field(default_factory=unique_site)
    other: str = field(default_factory=unique_site)
    nc: Client | None = None
    flow: FlowProcess | None = None

    def __post_init__(self) -> None:
        self.mongo: MongoClient[Document] = mongo_client(self.servers, retryWrites=False)
        self.db = self.mongo[names.mongo_database(self.site)]

    @property
    def client(self) -> Client:
        assert self.nc is not None
        return self.nc

    async def start(self, users: list[dict[str, Any]], *, flow: bool = True, **env: str) -> RoomHarness:
        """Streams, indexes and `users`; then the flow, unless `flow=False` (the test starts it)."""
        self.nc = await connect_site(self.servers, "s1")
        await bootstrap_local_sites(self.nc, [self.site, self.other])
        ensure_indexes(self.db)
        if users:
            self.db.users.insert_many(users)
        if flow:
            self.start_flow(**env)
        return self

    def start_flow(self, module: str = names.flow_module(names.ROOM_WORKER_FLOW), **env: str) -> None:
        """Run `module`'s flow for this site (`testkit.crashing_room_worker` for a worker that dies mid-command)."""
        self.flow = FlowProcess(module, flow_env(self.servers, self.site, **env)).start()

    async def close(self) -> None:
        if self.flow is not None:
            self.flow.stop()
        self.mongo.drop_database(self.db.name)
        self.mongo.close()
        if self.nc is not None:
            js = self.nc.jetstream()
            for site in (self.site, self.other):
                for stream in (names.rooms_stream, names.outbox_stream, names.inbox_stream, names.dlq_stream):
                    await js.delete_stream(stream(site))
            await self.nc.close()

    async def send(self, op: str, body: dict[str, Any] | bytes, *, request_id: str | None = None, requester: str = "") -> str:
        """Publish a command to ROOMS; returns the request id (its result is read with `result`)."""
        rid = request_id if request_id is not None else str(uuid.uuid4())
        headers = {"X-Request-ID": rid} if rid else None
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.jetstream().publish(subjects.rooms_command(self.site, op), data, headers=headers)
        return rid

    async def call(self, op: str, body: dict[str, Any] | bytes, *, requester: str, request_id: str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Send a command and wait for its result, subscribed before publishing."""
        rid = request_id or str(uuid.uuid4())
        sub = await self.client.subscribe(subjects.command_result(account=requester, request_id=rid))
        try:
            await self.send(op, body, request_id=rid)
            msg = await sub.next_msg(timeout=timeout)
        finally:
            await sub.unsubscribe()
        result: dict[str, Any] = json.loads(msg.data)
        return result

    async def drained(self) -> None:
        await wait_drained(self.client.jetstream(), names.rooms_stream(self.site), names.ROOM_WORKER_DURABLE, timeout=60)

    async def read(self, stream: str, filter_subject: str = "") -> list[Msg]:
        """Every message of `stream` (optionally filtered), read with an ephemeral ordered consumer."""
        js = self.client.jetstream()
        info = await js.stream_info(stream)
        if info.state.messages == 0:
            return []
        sub = await js.subscribe(filter_subject or ">", stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        out: list[Msg] = []
        try:
            while True:
                try:
                    out.append(await sub.next_msg(timeout=0.5))
                except TimeoutError:
                    return out
        finally:
            await sub.unsubscribe()

    async def events(self, stream: str, filter_subject: str = "") -> list[Event]:
        return [decode(msg) for msg in await self.read(stream, filter_subject)]

    async def local_events(self) -> list[Event]:
        return await self.events(names.inbox_stream(self.site), subjects.inbox_local_filter(self.site))

    async def outbox_events(self) -> list[Event]:
        return await self.events(names.outbox_stream(self.site))

    async def aggregate_events(self, count: int) -> list[Event]:
        """The peer's aggregate lane (sourced from our OUTBOX), once `count` events arrived."""
        stream = names.inbox_stream(self.other)
        filt = subjects.inbox_aggregate_filter(self.other)

        async def enough() -> list[Event] | None:
            found = await self.events(stream, filt)
            return found if len(found) >= count else None

        found: list[Event] = await wait_for(enough, timeout=30, what=f"{count} aggregate events on {stream}")
        return found

    async def dead_letters(self) -> list[Msg]:
        return await self.read(names.dlq_stream(self.site))

    def subs(self, room_id: str) -> dict[str, dict[str, Any]]:
        return {d["u"]["account"]: d for d in self.db.subscriptions.find({"roomId": room_id})}


def decode(msg: Msg) -> Event:
    envelope = json.loads(msg.data)
    inner = json.loads(base64.b64decode(envelope["payload"]))
    return Event(subject=msg.subject, msg_id=(msg.headers or {}).get("Nats-Msg-Id", ""), envelope=envelope, inner=inner)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def with_harness(servers: dict[str, Any], users: Callable[[str, str], list[dict[str, Any]]], scenario: Any, **env: str) -> None:
    """Run `scenario(harness)` on a fresh site seeded with `users(home, remote)`, cleaning up afterwards."""
    harness = RoomHarness(servers)
    try:
        await harness.start(users(harness.site, harness.other), **env)
        await scenario(harness)
    finally:
        await harness.close()
