"""search_sync against real NATS and Elasticsearch: vectors, poison, coalescing, renames and the query module."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dataflows.search_sync.queries import rooms_for, typeahead
from schemas import carriers, names, subjects
from testkit.clients import es_client
from testkit.search_oracle import added, removed, renamed
from testkit.search_site import HOME, SearchSite, close_site, open_site
from testkit.support import wait_for
from tests.unit.test_search_views import SEARCH_VECTORS, check_vector_expectations


@pytest.fixture
async def search_site(servers: dict[str, Any]) -> AsyncIterator[SearchSite]:
    site = await open_site(servers, es_client(servers))
    yield site
    await close_site(site)


def _inbox_subject(site: str, vector_subject: str) -> str:
    event_type = vector_subject.rsplit(".", 1)[1]
    if vector_subject.startswith("outbox."):  # through OUTBOX_s1, sourced onto the aggregate lane
        return subjects.outbox(origin=HOME, dest=site, event_type=event_type)
    return subjects.inbox_local(site, event_type)


def _forget_everything(site: SearchSite) -> None:
    """Delete every document (no delete_by_query module here), so the next vector starts from nothing."""
    for index in (site.indexes.user_room, site.indexes.spotlight, site.indexes.room_names):
        ids = list(site.documents(index))
        if ids:
            site.es.bulk(operations=[{"delete": {"_index": index, "_id": doc_id}} for doc_id in ids], refresh=True)


async def test_each_vector_yields_exactly_its_documents(search_site: SearchSite) -> None:
    search_site.start_flow()
    for path in SEARCH_VECTORS:
        vector = json.loads(path.read_text())
        await search_site.publish([(_inbox_subject(search_site.site, vector["subject"]), vector["data"].encode())])
        await search_site.drain()
        user_rooms = search_site.documents(search_site.indexes.user_room)
        spotlight = search_site.documents(search_site.indexes.spotlight)
        check_vector_expectations(vector["expect"], user_rooms, spotlight)
        assert sorted(user_rooms) == sorted(set(vector["inner"]["accounts"])), path.stem
        if isinstance(vector["expect"].get("spotlight"), list):
            assert sorted(spotlight) == sorted(item["_id"] for item in vector["expect"]["spotlight"]), path.stem
        _forget_everything(search_site)


async def test_poison_goes_to_the_dlq_with_its_reason_and_the_flow_keeps_going(search_site: SearchSite) -> None:
    site = search_site.site
    search_site.start_flow()
    await search_site.publish(
        [
            (subjects.inbox_local(site, "member_added"), b"{not json"),
            (subjects.inbox_local(site, "member_added"), added("r1", [""], 5)),
            (subjects.outbox(origin=HOME, dest=site, event_type="member_removed"), added("r1", ["alice"], 10)),
        ]
    )
    await search_site.drain()
    js = search_site.nc.jetstream()
    sub = await js.pull_subscribe(subjects.dlq_filter(site), stream=names.dlq_stream(site))
    dead = await sub.fetch(2, timeout=10)
    reasons = sorted((msg.headers or {})[carriers.DLQ_REASON] for msg in dead)
    assert reasons[0].startswith("envelope:") and "accounts" in reasons[1], reasons
    assert {(msg.headers or {})[carriers.DLQ_SUBJECT] for msg in dead} == {subjects.inbox_local(site, "member_added")}
    user_room = rooms_for(search_site.es, search_site.indexes.user_room, "alice")
    assert user_room is not None and user_room.rooms == ["r1"], user_room  # dispatch by envelope type, not subject


async def test_events_for_one_account_in_one_flush_are_one_user_room_write(search_site: SearchSite) -> None:
    site = search_site.site
    events = [(subjects.inbox_local(site, "member_added"), added(f"r{i}", ["alice"], 1_000 + i)) for i in range(60)]
    events.append((subjects.inbox_local(site, "member_removed"), removed("r7", ["alice"], 5_000)))
    await search_site.publish(events)  # a backlog: the first flush window holds all of it
    search_site.start_flow(CHATFED_FLUSH_MS="3000")
    await search_site.drain()
    found = search_site.es.get(index=search_site.indexes.user_room, id="alice")
    assert found["_version"] == 1, "every event for alice was coalesced into one write"
    assert len(found["_source"]["rooms"]) == 59


async def test_rename_updates_names_and_a_late_add_does_not_bring_the_old_name_back(search_site: SearchSite) -> None:
    site = search_site.site
    search_site.start_flow()
    await search_site.publish(
        [
            (subjects.inbox_local(site, "member_added"), added("r1", ["alice", "bob"], 100, name="Eng Platform")),
            (subjects.inbox_local(site, "member_added"), added("d1", ["alice", "carol"], 110, name="", room_type="dm")),
        ]
    )
    await search_site.drain()
    await search_site.publish([(subjects.inbox_local(site, "room_renamed"), renamed("r1", "Platform Guild", 200))])
    await search_site.drain()
    late = added("r1", ["dave"], 150, name="Eng Platform")  # older than the rename
    await search_site.publish([(subjects.outbox(origin=HOME, dest=site, event_type="member_added"), late)])
    await search_site.drain()
    names = {doc_id: doc["roomName"] for doc_id, doc in search_site.views()[1].items()}
    assert names == {"alice_r1": "Platform Guild", "bob_r1": "Platform Guild", "dave_r1": "Platform Guild", "alice_d1": "carol", "carol_d1": "alice"}
    es, index = search_site.es, search_site.indexes.spotlight
    assert [doc.room_id for doc in typeahead(es, index, "dave", "platform gu")] == ["r1"]
    assert typeahead(es, index, "dave", "eng") == []
    assert [doc.room_name for doc in typeahead(es, index, "alice", "car")] == ["carol"]
    assert typeahead(es, index, "alice", "car", room_type="channel") == []


async def test_typeahead_ranks_by_score_then_newest_join(search_site: SearchSite) -> None:
    site = search_site.site
    search_site.start_flow()
    await search_site.publish(
        [(subjects.inbox_local(site, "member_added"), added(f"r{i}", ["alice"], 100 + i, name=f"team alpha {i}")) for i in range(3)]
        + [(subjects.inbox_local(site, "member_added"), added("other", ["bob"], 500, name="team alpha"))]
    )
    await search_site.drain()

    def ranked() -> list[str]:
        return [doc.room_id for doc in typeahead(search_site.es, search_site.indexes.spotlight, "alice", "team al")]

    assert await wait_for(ranked, timeout=10) == ["r2", "r1", "r0"]


async def test_aggregate_events_of_unproven_origin_are_dead_lettered_and_never_applied(search_site: SearchSite) -> None:
    site, impostor = search_site.site, search_site.others[0]
    search_site.start_flow()
    await search_site.publish(
        [
            # sourced from OUTBOX_{impostor}, but the envelope claims s1 (issue 7)
            (subjects.outbox(origin=impostor, dest=site, event_type="member_added"), added("r-forged", ["mallory"], 10)),
            # written straight onto the aggregate lane: no Nats-Stream-Source at all
            (subjects.inbox_aggregate(site, "member_added"), added("r-direct", ["mallory"], 11)),
            # the genuine article still goes through
            (subjects.outbox(origin=HOME, dest=site, event_type="member_added"), added("r-real", ["alice"], 12)),
        ]
    )
    await search_site.drain()
    sub = await search_site.nc.jetstream().pull_subscribe(subjects.dlq_filter(site), stream=names.dlq_stream(site))
    reasons = sorted((msg.headers or {})[carriers.DLQ_REASON] for msg in await sub.fetch(2, timeout=10))
    assert reasons[0].startswith("origin mismatch: envelope claims siteId 's1'") and f"OUTBOX_{impostor}" in reasons[0], reasons
    assert reasons[1].startswith("origin unproven"), reasons
    assert rooms_for(search_site.es, search_site.indexes.user_room, "mallory") is None
    assert list(search_site.documents(search_site.indexes.spotlight)) == ["alice_r-real"]
