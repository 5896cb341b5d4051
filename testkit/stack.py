"""Two test sites with all three flows each: commands in, every store of both sites read back as memberships.

Both sites live on the s1 server (fresh site ids, sourcing each other's OUTBOX locally), each with its
own MongoDB database and Elasticsearch indexes, so a test owns everything it compares.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from elasticsearch import NotFoundError
from nats.aio.client import Client
from nats.js.api import StreamConfig
from pymongo import MongoClient

from connectors.mongo import Document, ensure_indexes
from schemas import names, subjects
from schemas.names import FLOWS
from schemas.streams import site_streams
from testkit.clients import es_client, mongo_client
from testkit.search_site import cleanup_indexes
from testkit.support import FlowProcess, bootstrap_local_sites, connect_site, flow_env, unique_site, wait_drained

CONSUMERS = (
    (names.rooms_stream, names.ROOM_WORKER_DURABLE),
    (names.inbox_stream, names.INBOX_WORKER_DURABLE),
    (names.inbox_stream, names.SEARCH_SYNC_DURABLE),
)

Membership = tuple[str, str]  # (room id, account)


@dataclass
class Views:
    """What one site's stores say: memberships per store."""

    home_mongo: set[Membership]  # subscriptions of rooms homed here
    mirror_mongo: set[Membership]  # subscriptions mirrored from rooms homed elsewhere
    user_room: set[Membership]  # rooms and restrictedRooms of every user-room document
    spotlight: set[Membership]


@dataclass
class Stack:
    servers: Mapping[str, Any]
    sites: list[str] = field(default_factory=lambda: [unique_site("c"), unique_site("c")])
    flows: dict[tuple[str, str], FlowProcess] = field(default_factory=dict)
    nc: Client | None = None

    def __post_init__(self) -> None:
        self.mongo: MongoClient[Document] = mongo_client(self.servers, retryWrites=False)
        self.es = es_client(self.servers)

    @property
    def client(self) -> Client:
        assert self.nc is not None
        return self.nc

    def db(self, site: str) -> Any:
        return self.mongo[names.mongo_database(site)]

    async def open(
        self, users: Iterable[tuple[str, str]], *, duplicate_window_s: float = 0, env_by_flow: Mapping[str, Mapping[str, str]] | None = None
    ) -> Stack:
        """Streams of both sites, `users` (account, site) known on both sites, and every flow started (`env_by_flow`: extra
        environment by flow name)."""
        self.nc = await connect_site(self.servers, "s1")
        await bootstrap_local_sites(self.nc, self.sites)
        if duplicate_window_s:
            await self.set_duplicate_window(duplicate_window_s)
        docs = [{"_id": f"u-{account}", "account": account, "siteId": site} for account, site in users]
        for site in self.sites:
            ensure_indexes(self.db(site))
            if docs:
                self.db(site).users.insert_many(docs)
        for site in self.sites:
            for flow in FLOWS:
                self.start_flow(site, flow, **(env_by_flow or {}).get(flow, {}))
        return self

    async def set_duplicate_window(self, seconds: float) -> None:
        """Shorten OUTBOX and INBOX dedup windows, so a test can step outside them."""
        js = self.client.jetstream()
        for site in self.sites:
            for stream in (names.outbox_stream(site), names.inbox_stream(site)):
                config: StreamConfig = (await js.stream_info(stream)).config
                config.duplicate_window = seconds
                await js.update_stream(config)

    def start_flow(self, site: str, flow: str, **env: str) -> FlowProcess:
        process = FlowProcess(names.flow_module(flow), flow_env(self.servers, site, **env), name=f"{flow}-{site}").start()
        self.flows[(site, flow)] = process
        return process

    def assert_alive(self) -> None:
        for process in self.flows.values():
            process.assert_alive()

    async def call(self, site: str, op: str, body: dict[str, Any], *, requester: str, request_id: str = "", timeout: float = 60) -> dict[str, Any]:
        """Send a command to `site` and wait for its result (subscribed before publishing)."""
        rid = request_id or str(uuid.uuid4())
        sub = await self.client.subscribe(subjects.command_result(account=requester, request_id=rid))
        try:
            await self.client.jetstream().publish(subjects.rooms_command(site, op), json.dumps(body).encode(), headers={"X-Request-ID": rid})
            msg = await sub.next_msg(timeout=timeout)
        finally:
            await sub.unsubscribe()
        result: dict[str, Any] = json.loads(msg.data)
        return result

    async def drained(self, timeout: float = 120) -> None:
        """Every durable of both sites has nothing pending or unacknowledged, and every source caught up."""
        js = self.client.jetstream()
        for site in self.sites:
            for other in self.sites:
                if other != site:
                    await self._sourced(js, site, other, timeout)
        for site in self.sites:
            for stream, durable in CONSUMERS:
                await wait_drained(js, stream(site), durable, timeout=timeout)

    async def _sourced(self, js: Any, site: str, origin: str, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await js.stream_info(names.inbox_stream(site))
            lag = next((s.lag for s in info.sources or [] if s.name == names.outbox_stream(origin)), 0)
            if not lag:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{names.inbox_stream(site)} still lags {names.outbox_stream(origin)} by {lag}")
            await asyncio.sleep(0.1)

    def views(self, site: str) -> Views:
        db = self.db(site)
        home: set[Membership] = set()
        mirror: set[Membership] = set()
        for sub in db.subscriptions.find({}, {"roomId": 1, "u": 1, "siteId": 1}):
            (home if sub["siteId"] == site else mirror).add((sub["roomId"], sub["u"]["account"]))
        user_room: set[Membership] = set()
        for account, doc in self._documents(names.user_room_alias(site)).items():
            user_room |= {(room, account) for room in [*doc.get("rooms", []), *(doc.get("restrictedRooms") or {})]}
        spotlight = {(doc["roomId"], doc["userAccount"]) for doc in self._documents(names.spotlight_alias(site)).values()}
        return Views(home_mongo=home, mirror_mongo=mirror, user_room=user_room, spotlight=spotlight)

    def _documents(self, index: str) -> dict[str, dict[str, Any]]:
        try:
            self.es.indices.refresh(index=index)
            hits = self.es.search(index=index, size=10_000, query={"match_all": {}})["hits"]["hits"]
        except NotFoundError:
            return {}
        return {hit["_id"]: hit["_source"] for hit in hits}

    def expected(self, site: str, members: Mapping[str, set[str]], homes: Mapping[str, str], user_sites: Mapping[str, str]) -> Views:
        """What `site`'s stores must say, given each room's members, its home and each user's site."""
        home = {(room, a) for room, accounts in members.items() if homes[room] == site for a in accounts}
        mirror = {(room, a) for room, accounts in members.items() if homes[room] != site for a in accounts if user_sites[a] == site}
        return Views(home_mongo=home, mirror_mongo=mirror, user_room=home | mirror, spotlight=home | mirror)

    async def close(self) -> None:
        for process in self.flows.values():
            process.stop()
        for site in self.sites:
            self.mongo.drop_database(names.mongo_database(site))
            cleanup_indexes(self.es, site)
        if self.nc is not None:
            js = self.nc.jetstream()
            for site in self.sites:
                for spec in site_streams(site, self.sites):
                    try:
                        await js.delete_stream(spec.name)
                    except nats.js.errors.NotFoundError:
                        pass  # never created, or already gone
            await self.nc.close()
        self.mongo.close()
        self.es.close()
