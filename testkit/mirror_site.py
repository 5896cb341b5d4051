"""A fresh test site for inbox_mirror: streams on the s1 server, its own Mongo database, event builders and readers."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import msgspec
from msgspec import UNSET
from nats.aio.client import Client
from nats.aio.msg import Msg
from pymongo import MongoClient

from connectors.mongo import Document, ensure_indexes
from connectors.settings import load_tuning
from schemas import names, subjects
from schemas.events import (
    InnerEvent,
    MemberAddEvent,
    MemberRemoveEvent,
    RoleSubscription,
    RoleUpdatedEvent,
    RoleUser,
    RoomRenamedEvent,
)
from testkit.clients import mongo_client
from testkit.support import (
    FlowProcess,
    bootstrap_local_sites,
    connect_site,
    envelope_bytes,
    flow_env,
    retune,
    unique_site,
    wait_drained,
    wait_for,
)

T = TypeVar("T")
MODULE = names.flow_module(names.INBOX_MIRROR_FLOW)


def add(
    room: str, accounts: list[str], ts: int, *, name: str = "room", room_type: str = "channel", requester: str = "", joined_at: int = 0, hss: int = 0
) -> tuple[str, InnerEvent, int]:
    event = MemberAddEvent(
        type="member_added", room_id=room, room_name=name, room_type=room_type, accounts=accounts, site_id="home",
        requester_account=requester, joined_at=joined_at or ts, history_shared_since=hss or UNSET, timestamp=ts,
    )
    return "member_added", event, ts


def remove(room: str, accounts: list[str], ts: int, *, inner: str = "member_removed", org: str = "") -> tuple[str, InnerEvent, int]:
    return "member_removed", MemberRemoveEvent(type=inner, room_id=room, accounts=accounts, site_id="home", org_id=org, timestamp=ts), ts


def roles(room: str, account: str, new_roles: list[str], ts: int) -> tuple[str, InnerEvent, int]:
    sub = RoleSubscription(room_id=room, u=RoleUser(account=account), roles=new_roles)
    return "role_updated", RoleUpdatedEvent(user_id=f"u-{account}", subscription=sub, action="role_updated", timestamp=ts), ts


def rename(room: str, name: str, ts: int) -> tuple[str, InnerEvent, int]:
    return "room_renamed", RoomRenamedEvent(room_id=room, new_name=name, timestamp=ts), ts


Item: TypeAlias = tuple[str, InnerEvent, int]
ACCOUNTS = ["a", "b", "c", "d", "e"]
# real epoch ms: a restart purges registers older than the horizon (writer.py)
BASE_MS = int(time.time() * 1000) - 3_600_000


def oracle(items: list[Item]) -> set[tuple[str, str]]:
    """Apply the events one account at a time in timestamp order (a remove after an add of the same ms)."""
    per_account = []
    for event_type, event, ts in items:
        for account in event.accounts:  # type: ignore[union-attr]
            per_account.append((ts, event_type == "member_removed", event.room_id, account))  # type: ignore[union-attr]
    present: set[tuple[str, str]] = set()
    for _, removed, room, account in sorted(per_account):
        (present.discard if removed else present.add)((room, account))
    return present


def history(rnd: random.Random, rooms: list[str], events: int, *, accounts: list[str] = ACCOUNTS) -> list[Item]:
    """Random adds/removes of 1-3 accounts, every add of a room shaped alike (insert-only fields then agree)."""
    items: list[Item] = []
    pool = accounts
    for _ in range(events):
        room, ts = rnd.choice(rooms), BASE_MS + rnd.randint(1, 10 * events)
        accounts = rnd.sample(pool, rnd.randint(1, 3))
        items.append(add(room, accounts, ts, joined_at=1) if rnd.random() < 0.55 else remove(room, accounts, ts))
    return items


def redelivered(rnd: random.Random, items: list[Item]) -> list[Item]:
    """The history in a random order with some events twice: what redelivery and parallel workers produce."""
    out = items + rnd.sample(items, k=len(items) // 3)
    rnd.shuffle(out)
    return out


@dataclass(frozen=True)
class DeadLetter:
    subject: str
    headers: dict[str, str]
    data: bytes


class MirrorSite:
    """Streams of `site` (and its peer `other`) on one server, the site's database, and one event loop for NATS calls."""

    def __init__(self, servers: dict[str, Any], *, third: bool = False) -> None:
        self.servers = servers
        self.site, self.other = unique_site(), unique_site()
        self.third = unique_site() if third else ""  # a second peer whose OUTBOX is sourced too
        self.peers = [p for p in (self.other, self.third) if p]
        self.url = servers["sites"]["s1"]["nats_url"]
        self.mongo: MongoClient[Document] = mongo_client(servers, serverSelectionTimeoutMS=10_000)
        self.db = self.mongo[names.mongo_database(self.site)]
        self.loop = asyncio.new_event_loop()
        self.nc: Client = self.run(connect_site(servers, "s1"))
        self.js = self.nc.jetstream()
        self.run(bootstrap_local_sites(self.nc, [self.site, *self.peers]))
        ensure_indexes(self.db)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def users(self, accounts: list[str]) -> None:
        self.db.users.insert_many([{"_id": f"u-{a}", "account": a, "siteId": self.site} for a in accounts])

    def envelope(self, item: tuple[str, InnerEvent, int], *, origin: str = "") -> bytes:
        """The envelope `origin` (default: the peer) sends; an add/remove's room is homed on it too."""
        event_type, event, ts = item
        origin = origin or self.other
        if isinstance(event, (MemberAddEvent, MemberRemoveEvent)):
            event = msgspec.structs.replace(event, site_id=origin)
        return envelope_bytes(event, event_type=event_type, site=origin, dest=self.site, timestamp=ts)

    def publish(self, items: list[tuple[str, InnerEvent, int]]) -> None:
        """Through the peer's OUTBOX, sourced into the aggregate lane as in production (the origin check needs the
        server's `Nats-Stream-Source` header); each with a fresh dedup id (a republish is a redelivery, not a duplicate).
        Returns once the INBOX holds them all."""

        async def go() -> None:
            pending = [
                self.js.publish(
                    subjects.outbox(origin=self.other, dest=self.site, event_type=item[0]), self.envelope(item), headers={"Nats-Msg-Id": uuid.uuid4().hex}
                )
                for item in items
            ]
            for start in range(0, len(pending), 500):
                await asyncio.gather(*pending[start : start + 500])
            await self.sourced()

        self.run(go())

    async def sourced(self, timeout: float = 60) -> None:
        """Until every message of the peers' OUTBOXes reached this site's INBOX (sourcing is asynchronous)."""

        async def caught_up() -> bool:
            sent = sum([(await self.js.stream_info(names.outbox_stream(peer))).state.messages for peer in self.peers])
            inbox = await self.js.stream_info(names.inbox_stream(self.site), subjects_filter=subjects.inbox_aggregate_filter(self.site))
            return inbox.state.messages >= sent

        await wait_for(caught_up, timeout=timeout, interval=0.05, what="OUTBOX sourced into INBOX")

    def publish_raw(self, subject: str, data: bytes) -> None:
        """One message as a peer's OUTBOX would carry it (a forged one, say), then until it is sourced."""

        async def go() -> None:
            await self.js.publish(subject, data, headers={"Nats-Msg-Id": uuid.uuid4().hex})
            await self.sourced()

        self.run(go())

    async def fetch_dead_letters(self) -> list[DeadLetter]:
        """What the flow dead-lettered so far (read without acking)."""
        sub = await self.js.pull_subscribe(subjects.dlq_filter(self.site), stream=names.dlq_stream(self.site))
        try:
            msgs: list[Msg] = await sub.fetch(100, timeout=1)
        except TimeoutError:
            return []
        finally:
            await sub.unsubscribe()
        return [DeadLetter(subject=m.subject, headers=dict(m.headers or {}), data=m.data) for m in msgs]

    def dead_letters(self, count: int, timeout: float = 30) -> list[DeadLetter]:
        """Until exactly `count` dead letters are there; fails on more."""

        async def enough() -> list[DeadLetter] | None:
            found = await self.fetch_dead_letters()
            assert len(found) <= count, [m.headers for m in found]
            return found if len(found) == count else None

        return self.run(wait_for(enough, timeout=timeout, what=f"{count} dead letters"))

    def drained(self, timeout: float = 60) -> None:
        self.run(wait_drained(self.js, names.inbox_stream(self.site), names.INBOX_WORKER_DURABLE, timeout))

    def subs(self, **query: Any) -> list[Document]:
        return list(self.db.subscriptions.find(query))

    def present(self) -> set[tuple[str, str]]:
        return {(d["roomId"], d["u"]["account"]) for d in self.db.subscriptions.find({}, {"roomId": 1, "u.account": 1})}

    def flow(self, *, processes: int = 1, **env: str) -> FlowProcess:
        """inbox_mirror for this site; its durable takes the delivery contract of `env` first (the flow checks it)."""
        full = flow_env(self.servers, self.site, **env)
        self.run(retune(self.js, names.inbox_stream(self.site), names.INBOX_WORKER_DURABLE, load_tuning(full)))
        return FlowProcess(MODULE, full, processes=processes)

    def close(self) -> None:
        async def drop() -> None:
            for site in (self.site, *self.peers):
                for stream in (names.rooms_stream(site), names.outbox_stream(site), names.inbox_stream(site), names.dlq_stream(site)):
                    await self.js.delete_stream(stream)
            await self.nc.close()

        self.run(drop())
        self.loop.close()
        self.mongo.drop_database(self.db.name)
        self.mongo.close()


@contextmanager
def mirror_site(servers: dict[str, Any], *, third: bool = False) -> Iterator[MirrorSite]:
    site = MirrorSite(servers, third=third)
    try:
        yield site
    finally:
        site.close()
