"""Chunked member events (room_worker's own bytes) through the real search_sync and inbox_mirror flows.

Two rooms get the same history: `ru` as single events in timestamp order, `rc` with the big add (and removal) split
into chunks, delivered shuffled, some twice, interleaved with removals (one at the add's own instant). Both rooms must
end with the same documents; and a room_worker killed before publishing its chunks publishes each exactly once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from dataflows.room_worker.commands import Publish
from dataflows.room_worker.events import dedup_id, member_added_publishes, member_removed_publishes
from schemas import names, subjects
from schemas.documents import Room, User
from schemas.streams import MAX_DELIVER
from testkit.clients import es_client
from testkit.mirror_site import BASE_MS, mirror_site
from testkit.room_harness import RoomHarness, run, user, with_harness
from testkit.search_site import SearchSite, close_site, open_site
from tests.integration.test_room_worker_crash import CRASHING, _died_at_the_crash_hook

LIMIT = 4
ACCOUNTS = [f"m{i:02}" for i in range(15)]


def history(room: str, home: str, site: str, limit: int | None, t: int) -> list[Publish]:
    """An older restricted add of four, the big add, a removal at its instant, a later removal of three, a re-add of
    one; members homed on `site` (the local lane when `site == home`, else `home`'s OUTBOX lane to `site`)."""
    members = [User(id=f"id-{a}", account=a, site_id=site) for a in ACCOUNTS]

    def add(people: list[User], ts: int, *, name: str = "big", hss: int = 0, joined: int = 0) -> list[Publish]:
        room_doc = Room(id=room, name=name, type="channel", site_id=home, created_at=1, updated_at=1)
        return member_added_publishes(
            room=room_doc, members=people, requester_account="alice", joined_at=joined or ts - 1, history_shared_since=hss,
            now_ms=ts, dedup_base=f"{room}-add-{ts}", max_accounts=limit,
        )

    def remove(people: list[User], ts: int) -> list[Publish]:
        return member_removed_publishes(
            home=home, room_id=room, members=people, inner_type="member_removed", org_id="", now_ms=ts, dedup_base=f"{room}-rm-{ts}", max_accounts=limit
        )

    events = [
        *add(members[:4], t - 100, name="old", hss=t - 100, joined=t - 105),
        *add(members, t),
        *remove(members[4:5], t),
        *remove(members[5:11], t + 10),
        *add(members[6:7], t + 20, name="later"),
    ]
    return [p for p in events if p.msg_id.rsplit(":", 1)[1].split("#")[0] == site]


def shuffled(publishes: list[Publish], seed: int) -> list[Publish]:
    rnd = random.Random(seed)
    out = publishes + rnd.sample(publishes, k=len(publishes) // 2)
    rnd.shuffle(out)
    return out


def _for_room(views: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]], room: str) -> tuple[dict[str, Any], dict[str, Any]]:
    user_rooms, spotlight = views
    mine = {
        account: (room in doc["rooms"], doc["restrictedRooms"].get(room), doc["roomTimestamps"].get(room))
        for account, doc in user_rooms.items()
        if room in doc["roomTimestamps"]
    }
    return mine, {doc_id.removesuffix(f"_{room}"): doc for doc_id, doc in spotlight.items() if doc_id.endswith(f"_{room}")}


def _local(site: str, publish: Publish) -> str:
    """The test site's local lane for one of room_worker's local-lane publishes (of site s1)."""
    return subjects.inbox_local(site, publish.subject.rsplit(".", 1)[1])


@pytest.fixture
async def search_site(servers: dict[str, Any]) -> AsyncIterator[SearchSite]:
    site = await open_site(servers, es_client(servers))
    yield site
    await close_site(site)


async def test_search_sync_chunks_redelivered_and_reordered_equal_the_single_events(search_site: SearchSite) -> None:
    site = search_site.site
    t = 1_767_225_600_000
    single = history("ru", "s1", "s1", None, t)
    chunks = history("rc", "s1", "s1", LIMIT, t)
    assert len(chunks) == len(single) + 3 + 1, "the big add in 4 chunks, the removal of six in 2"
    search_site.start_flow(CHATFED_FLUSH_MS="30")
    for publish in single:  # the reference: one event at a time, in timestamp order
        await search_site.publish([(_local(site, publish), publish.data)])
        await search_site.drain()
    await search_site.publish([(_local(site, p), p.data) for p in shuffled(chunks, 12)])
    await search_site.drain()
    views = search_site.views()
    expected_rooms, expected_spotlight = _for_room(views, "ru")
    assert len(expected_rooms) == len(ACCOUNTS) and len(expected_spotlight) == len(ACCOUNTS) - 6
    assert expected_rooms["m00"] == (False, t - 100, t) and expected_spotlight["m00"]["joinedAt"] == t - 105, "the older add shapes"
    assert _for_room(views, "rc") == (expected_rooms, expected_spotlight)


def test_inbox_mirror_chunks_redelivered_and_reordered_equal_the_single_events(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as s:
        s.users(ACCOUNTS)
        t = BASE_MS
        single = history("ru", s.other, s.site, None, t)
        chunks = history("rc", s.other, s.site, LIMIT, t)
        assert len(chunks) == len(single) + 3 + 1
        with s.flow(CHATFED_FLUSH_MS="30") as flow:
            for publish in single:
                s.publish_raw(publish.subject, publish.data)
                s.drained()
            for publish in shuffled(chunks, 34):  # a fresh dedup id each: a republish is a redelivery
                s.publish_raw(publish.subject, publish.data)
            s.drained()
            flow.assert_alive()
        docs = {(d["roomId"], d["u"]["account"]): {k: v for k, v in d.items() if k not in ("_id", "roomId")} for d in s.subs()}
        reference = {account: doc for (room, account), doc in docs.items() if room == "ru"}
        assert sorted(reference) == [a for i, a in enumerate(ACCOUNTS) if i < 4 or i == 6 or i >= 11]
        assert reference["m00"]["historySharedSince"] == t - 100 and reference["m13"]["joinedAt"] == t - 1
        assert {account: doc for (room, account), doc in docs.items() if room == "rc"} == reference


def test_a_worker_killed_before_publishing_its_chunks_publishes_each_once(servers: dict[str, Any]) -> None:
    people = [f"p{i}" for i in range(8)]

    def users(home: str, remote: str) -> list[dict[str, Any]]:
        return [user("alice", home), *(user(p, remote if i % 2 else home) for i, p in enumerate(people))]

    async def scenario(h: RoomHarness) -> None:
        rid = "0195f0a2-0000-7000-8000-00000000cc01"
        # a short ack wait on the durable too, so the killed worker's command comes back within the test
        config = ConsumerConfig(
            durable_name=names.ROOM_WORKER_DURABLE, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=2, max_deliver=MAX_DELIVER
        )
        await h.client.jetstream().add_consumer(names.rooms_stream(h.site), config)
        h.start_flow(CRASHING, CHATFED_EVENT_MAX_ACCOUNTS="3", CHATFED_ACK_WAIT_S="2")
        await h.send("create", {"name": "big", "users": people, "roomId": "r-big", "requesterAccount": "alice", "timestamp": 1}, request_id=rid)
        assert h.flow is not None
        await _died_at_the_crash_hook(h.flow)
        assert await h.local_events() == [], "killed after the writes, before any publish"
        h.start_flow(CHATFED_EVENT_MAX_ACCOUNTS="3", CHATFED_ACK_WAIT_S="2")
        await h.drained()
        local, outbox = await h.local_events(), await h.outbox_events()
        assert [e.inner["accounts"] for e in local] == [["alice", "p0", "p1"], ["p2", "p3", "p4"], ["p5", "p6", "p7"]]
        assert [e.inner["accounts"] for e in outbox] == [["p1", "p3", "p5"], ["p7"]]
        assert [e.msg_id for e in outbox] == [dedup_id(rid, h.other, k) for k in range(2)]
        assert [e.msg_id for e in local] == [dedup_id(rid, h.site, k) for k in range(3)]
        assert set(Counter(e.msg_id for e in local + outbox).values()) == {1}
        assert len({e.envelope["timestamp"] for e in local + outbox}) == 1, "one command, one timestamp"
        again = await h.call("create", {"name": "big", "users": people, "roomId": "r-big", "requesterAccount": "alice", "timestamp": 1},
                             requester="alice", request_id=rid)
        assert again["status"] == "ok"
        assert (await h.local_events(), await h.outbox_events()) == (local, outbox), "a retry republishes nothing new"

    async def start(h: RoomHarness) -> None:
        assert h.flow is not None
        h.flow.stop()  # the harness's own worker: this test runs its own
        await scenario(h)

    run(with_harness(servers, users, start))
