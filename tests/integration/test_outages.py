"""Store and NATS outages under running flows (issue 7): nothing lost, nothing dead-lettered, both flows catch up.
Flows started while their store is down (issue 10) wait for it, one log line per attempt, and catch up.

They stop FerretDB for 30 s, Elasticsearch for ~25 s and the s1 nats-server for a few seconds: servers of this module's own
(testkit/private_servers.py), so other test runs on the shared servers see none of it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import nats.errors
import pytest

from connectors.mongo import ensure_indexes
from schemas import names, subjects
from testkit.clients import es_client
from testkit.mirror_site import (
    MirrorSite,
    history,
    mirror_site,
    oracle,
    redelivered,
)
from testkit.private_servers import PrivateServers
from testkit.room_harness import RoomHarness, user
from testkit.search_oracle import added
from testkit.search_site import close_site, open_site
from testkit.support import (
    LOGS,
    FlowProcess,
    bootstrap_local_sites,
    connect_site,
    flow_env,
    wait_drained,
    wait_for,
)

T = TypeVar("T")

pytestmark = pytest.mark.slow

TS = int(time.time() * 1000) - 60_000
MONGO_OUTAGE_S = 30.0
NATS_OUTAGE_S = 3.0
CATCH_UP_S = 180.0
HOME_USERS = ["alice", "bob", "carol", "dave", *(f"u{i}" for i in range(10))]
MIRROR_ACCOUNTS = [f"m{i}" for i in range(12)]


class Rooms:
    """room_worker's half: commands whose final state does not depend on their order (see docs/ and the report)."""

    def __init__(self, h: RoomHarness) -> None:
        self.h = h
        self.expected: dict[str, set[str]] = {}  # room -> accounts

    async def create(self, prefix: str, count: int) -> None:
        for i in range(count):
            room = f"{prefix}{i}"
            body = {"name": room, "users": ["bob", "carol", "erin"], "roomId": room, "requesterAccount": "alice", "timestamp": TS + i}
            await self.h.send("create", body)
            self.expected[room] = {"alice", "bob", "carol", "erin"}

    async def add(self, prefix: str, count: int, member: Callable[[int], str]) -> None:
        """Adds to rooms created (and drained) earlier: adds of distinct members commute."""
        for i in range(count):
            room = f"{prefix}{i}"
            body = {"roomId": room, "users": [member(i)], "requesterAccount": "alice", "timestamp": TS + 10_000 + i}
            await self.h.send("member.add", body)
            self.expected[room].add(member(i))

    async def drained(self, timeout: float = CATCH_UP_S) -> None:
        await wait_drained(self.h.client.jetstream(), names.rooms_stream(self.h.site), names.ROOM_WORKER_DURABLE, timeout)

    async def check(self) -> None:
        db = self.h.db
        got: dict[str, set[str]] = {}
        for doc in db.subscriptions.find({}, {"roomId": 1, "u.account": 1}):
            got.setdefault(doc["roomId"], set()).add(doc["u"]["account"])
        assert got == self.expected
        counts = {d["_id"]: d["userCount"] for d in db.rooms.find({}, {"userCount": 1})}
        assert counts == {room: len(accounts) for room, accounts in self.expected.items()}
        creates = sum(1 for room in self.expected)
        outbox = await self.h.outbox_events()
        assert len(outbox) == creates and len({e.msg_id for e in outbox}) == creates  # erin's site: once per create
        assert not await self.h.dead_letters()


class Mirror:
    """inbox_mirror's half: random add/remove histories, checked against the timestamp-order oracle."""

    def __init__(self, m: MirrorSite, seed: int) -> None:
        self.m = m
        self.rnd = random.Random(seed)
        self.items: list[Any] = []

    def publish(self, events: int, tag: str) -> None:
        items = history(self.rnd, [f"{tag}-r{i}" for i in range(20)], events, accounts=MIRROR_ACCOUNTS)
        self.items += items
        self.m.publish(redelivered(self.rnd, items))

    async def drained(self, timeout: float = CATCH_UP_S) -> None:
        await self.m.sourced()
        await wait_drained(self.m.js, names.inbox_stream(self.m.site), names.INBOX_WORKER_DURABLE, timeout)

    async def check(self) -> None:
        assert self.m.present() == oracle(self.items)
        assert not await self.m.fetch_dead_letters()


class Both:
    """Both flows running on fresh test sites of the s1 server (one event loop for every NATS call)."""

    def __init__(self, m: MirrorSite, h: RoomHarness, mirror_flow: FlowProcess) -> None:
        self.m, self.h = m, h
        self.rooms, self.mirror = Rooms(h), Mirror(m, seed=3)
        self.mirror_flow = mirror_flow

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.m.run(coro)

    def settle_before(self) -> None:
        """Work done and drained before the outage: the rooms the later adds go to."""
        self.run(self.rooms.create("ra", 60))
        self.mirror.publish(150, "a")
        self.run(self.rooms.drained(60))
        self.run(self.mirror.drained(60))

    def jetstream_back(self) -> None:
        """Until the test's own connections answer again (the server recovers its streams after a restart)."""

        async def answers() -> bool:
            try:
                await self.m.js.stream_info(names.rooms_stream(self.h.site))
                await self.h.client.jetstream().stream_info(names.inbox_stream(self.m.site))
            except (nats.errors.Error, TimeoutError):
                return False
            return True

        self.run(wait_for(answers, timeout=60, interval=0.2, what="JetStream after the restart"))

    def catch_up(self, what: str) -> None:
        started = time.monotonic()
        self.run(self.rooms.drained())
        room_s = time.monotonic() - started
        self.run(self.mirror.drained())
        print(f"after {what} came back: room_worker drained in {room_s:.1f} s, inbox_mirror in {time.monotonic() - started:.1f} s")

    def check(self) -> None:
        assert self.h.flow is not None
        self.h.flow.assert_alive()  # never restarted: the same processes caught up
        self.mirror_flow.assert_alive()
        self.run(self.rooms.check())
        self.run(self.mirror.check())


@contextmanager
def both_flows(servers: dict[str, Any]) -> Iterator[Both]:
    with mirror_site(servers) as m:
        h = RoomHarness(servers)
        try:
            people = [user(a, h.site) for a in HOME_USERS] + [user("erin", h.other)]
            m.run(h.start(people))
            m.users(MIRROR_ACCOUNTS)
            with m.flow() as mirror_flow:
                yield Both(m, h, mirror_flow)
        finally:
            m.run(h.close())


def test_mongo_down_30s_under_room_worker_and_inbox_mirror(own_servers: PrivateServers) -> None:
    with both_flows(own_servers.info) as b:
        b.settle_before()
        # in flight when the store goes: published just before, not drained
        b.run(b.rooms.create("rb", 100))
        b.run(b.rooms.add("ra", 60, lambda i: f"u{i % 10}"))
        b.mirror.publish(150, "b")
        with own_servers.outage("ferretdb", MONGO_OUTAGE_S):
            b.run(b.rooms.create("rc", 100))
            b.run(b.rooms.add("ra", 60, lambda i: "dave"))
            b.mirror.publish(150, "c")
        b.catch_up("MongoDB")
        b.check()


def test_nats_restart_under_room_worker_and_inbox_mirror(own_servers: PrivateServers) -> None:
    with both_flows(own_servers.info) as b:
        b.settle_before()
        b.run(b.rooms.create("rb", 150))
        b.run(b.rooms.add("ra", 60, lambda i: f"u{i % 10}"))
        b.mirror.publish(1500, "b")  # enough that the flow is still busy when the server goes
        with own_servers.outage("nats-s1", NATS_OUTAGE_S):
            pass
        b.jetstream_back()
        b.run(b.rooms.create("rc", 60))  # after the restart: the flows still take new work
        b.mirror.publish(100, "c")
        b.catch_up("nats-s1")
        b.check()


# --------------------------------------------------------------------------- flows started during an outage (issue 10)

STARTING_OUTAGE_S = 25.0
QUICK_BACKOFF = {"CHATFED_BACKOFF_BASE_MS": "200", "CHATFED_BACKOFF_MAX_MS": "2000"}
ATTEMPT_RE = re.compile(r"cannot start yet \(attempt (\d+)\)")
LOG_RECORD_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def assert_waited_one_line_per_attempt(flow: FlowProcess) -> None:
    """The flow's log: failed start-up attempts, each one line numbered 1..n, and at most one traceback in all."""
    log = (LOGS / f"{flow.name}-0.log").read_text()
    attempts = [int(m.group(1)) for m in ATTEMPT_RE.finditer(log)]
    assert len(attempts) >= 2, f"{flow.name} did not wait for its store:\n{log}"
    assert attempts == list(range(1, len(attempts) + 1)), log
    lines = log.splitlines()
    records = [line for line in lines if LOG_RECORD_RE.match(line)]
    with_traceback = [line for line, after in zip(lines, lines[1:]) if LOG_RECORD_RE.match(line) and after.startswith("Traceback")]
    assert len(with_traceback) <= 1, log  # a client library's, once per outage: not one per attempt
    assert len(records) <= len(attempts) + 15, "\n".join(records)  # nothing else repeats per attempt


async def waiting_for_the_store(flow: FlowProcess) -> None:
    """Until the flow has logged a failed start-up attempt: it is up and waiting for its store."""
    log = LOGS / f"{flow.name}-0.log"
    await wait_for(lambda: log.exists() and ATTEMPT_RE.search(log.read_text()), timeout=60, what=f"{flow.name} to wait for its store")


def fresh_log(flow: FlowProcess) -> FlowProcess:
    (LOGS / f"{flow.name}-0.log").unlink(missing_ok=True)
    return flow


def test_room_worker_and_inbox_mirror_started_while_mongo_is_down_wait_and_catch_up(own_servers: PrivateServers) -> None:
    servers = own_servers.info
    with mirror_site(servers) as m:
        h = RoomHarness(servers)
        try:
            # everything but the flows, while MongoDB is up: streams, indexes, users
            h.nc = m.run(connect_site(servers, "s1"))
            m.run(bootstrap_local_sites(h.client, [h.site, h.other]))
            ensure_indexes(h.db)
            h.db.users.insert_many([user(a, h.site) for a in HOME_USERS] + [user("erin", h.other)])
            m.users(MIRROR_ACCOUNTS)
            h.flow = fresh_log(FlowProcess("dataflows.room_worker", flow_env(servers, h.site, **QUICK_BACKOFF)))
            mirror_flow = fresh_log(m.flow(**QUICK_BACKOFF))
            b = Both(m, h, mirror_flow)
            try:
                with own_servers.outage("ferretdb", STARTING_OUTAGE_S):
                    h.flow.start()
                    mirror_flow.start()
                    m.run(waiting_for_the_store(h.flow))
                    m.run(waiting_for_the_store(mirror_flow))
                    b.run(b.rooms.create("rs", 40))  # published while the flows wait for the store
                    b.mirror.publish(150, "s")
                    h.flow.assert_alive()
                    mirror_flow.assert_alive()
                b.catch_up("MongoDB (flows started during the outage)")
                b.check()
                assert_waited_one_line_per_attempt(h.flow)
                assert_waited_one_line_per_attempt(mirror_flow)
            finally:
                mirror_flow.stop()
        finally:
            m.run(h.close())


async def test_search_sync_started_while_elasticsearch_is_down_waits_and_catches_up(own_servers: PrivateServers) -> None:
    site = await open_site(own_servers.info, es_client(own_servers.info))
    try:
        accounts = [f"a{i}" for i in range(20)]
        with own_servers.outage("es", STARTING_OUTAGE_S):
            flow = site.start_flow(**QUICK_BACKOFF)  # a fresh site: a fresh log
            await waiting_for_the_store(flow)
            events = [(subjects.inbox_local(site.site, "member_added"), added(f"r{i % 5}", [account], TS + i)) for i, account in enumerate(accounts)]
            await site.publish(events)
            flow.assert_alive()
        await site.drain(timeout=CATCH_UP_S)
        flow.assert_alive()
        user_rooms = site.documents(site.indexes.user_room)
        assert {account: doc["rooms"] for account, doc in user_rooms.items()} == {a: [f"r{i % 5}"] for i, a in enumerate(accounts)}
        assert_waited_one_line_per_attempt(flow)
    finally:
        await close_site(site)
