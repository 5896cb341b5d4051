"""SearchViewsWriter driven directly against the real Elasticsearch: conflicts, renames, stale events, its cache, an outage.

Each case used to show up only as an oracle mismatch thousands of events into a flow run. A competing
writer is made to land between our read and our write by a hook run before each of our bulks (no sleeps).
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from elasticsearch import Elasticsearch

from connectors.operators import PartOutcome
from connectors.settings import ElasticSettings
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync import writer as search_writer
from dataflows.search_sync.cache import WriteCache
from dataflows.search_sync.indexes import SearchIndexes, install
from dataflows.search_sync.renames import MAX_ROUNDS
from dataflows.search_sync.views import UserRoomBody
from dataflows.search_sync.writer import SearchViewsWriter
from testkit.clients import es_client, es_settings
from testkit.search_oracle import Event, added, delivery, event_bytes, oracle, renamed
from testkit.search_site import cleanup_indexes, documents, random_history, read_views
from testkit.support import unique_site

_seq = itertools.count(1)
Source = Event | bytes  # an event of the oracle, or raw envelope bytes (multi-account adds, renames)


class Hooked(SearchViewsWriter):
    """Counts its bulks and runs `before_bulk` ahead of each: another writer's change landing between our read and write."""

    def __init__(self, settings: ElasticSettings, indexes: SearchIndexes, before_bulk: Callable[[int], None] = lambda n: None) -> None:
        super().__init__(settings, indexes, flow="test_writer")
        self.before_bulk, self.bulks = before_bulk, 0

    def _bulk(self, actions: list[Any]) -> Any:
        self.bulks += 1
        self.before_bulk(self.bulks)
        return super()._bulk(actions)


class Views:
    """Fresh indexes per test, and writers pointed at them."""

    def __init__(self, es: Elasticsearch, servers: dict[str, Any]) -> None:
        self.es, self.settings, self.site = es, es_settings(servers), unique_site("w")
        self.indexes = SearchIndexes.for_site(self.settings, self.site)
        install(es, self.indexes)

    def writer(self, before_bulk: Callable[[int], None] = lambda n: None) -> Hooked:
        return Hooked(self.settings, self.indexes, before_bulk)

    def spotlight(self) -> dict[str, dict[str, Any]]:
        return documents(self.es, self.indexes.spotlight)

    def snapshot(self) -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
        """Every document of the three views: (index, id) -> (seq_no, source)."""
        index = ",".join(self.indexes.aliases)
        self.es.indices.refresh(index=index)
        hits = self.es.search(index=index, size=10_000, seq_no_primary_term=True, query={"match_all": {}})["hits"]["hits"]
        return {(hit["_index"], hit["_id"]): (hit["_seq_no"], hit["_source"]) for hit in hits}

    def assert_oracle(self, events: list[Event]) -> None:
        user_rooms, spotlight = read_views(self.es, self.indexes)
        expected_rooms, expected_spotlight = oracle(events)
        assert user_rooms == expected_rooms
        assert spotlight == expected_spotlight


@pytest.fixture
def site(servers: dict[str, Any]) -> Iterator[Views]:
    es = es_client(servers)
    opened = Views(es, servers)
    yield opened
    cleanup_indexes(es, opened.site)
    es.close()


def write(writer: SearchViewsWriter, *sources: Source) -> list[PartOutcome]:
    """One batch of `sources`' parts, keyed as the flow keys them; each source is a new delivery."""
    grouped: dict[str, list[object]] = {}
    for source in sources:
        parsed = search_parts.parse(delivery(event_bytes(source) if isinstance(source, Event) else source, seq=next(_seq)))
        assert search_parts.is_parts(parsed), parsed
        for part in parsed:
            grouped.setdefault(search_parts.part_key(part), []).append(part)
    return writer.write(list(grouped.items()))


def assert_ok(outcomes: list[PartOutcome]) -> None:
    assert outcomes and [o.reason for o in outcomes if not o.ok] == []


def add(account: str, room: str, ts: int, name: str = "") -> Event:
    return Event(account, room, ts, True, name=name)


def remove(account: str, room: str, ts: int) -> Event:
    return Event(account, room, ts, False)


# --- the conflict loop


def test_a_write_that_lost_the_race_is_replanned_from_the_winner(site: Views) -> None:
    ours, theirs = add("u1", "r1", 100), add("u1", "r2", 110)
    other = site.writer()
    writer = site.writer(lambda n: assert_ok(write(other, theirs)) if n == 1 else None)
    assert_ok(write(writer, ours))
    # our `create` of user-room conflicted with theirs (its spotlight change was held back); the re-read round
    # wrote user-room with both rooms, then the spotlight document
    assert writer.bulks == 3
    site.assert_oracle([ours, theirs])


def test_conflicts_every_round_fail_the_part_and_its_redelivery_converges(site: Views) -> None:
    seed, event = add("u1", "r0", 50), add("u1", "r1", 100)
    assert_ok(write(site.writer(), seed))

    def bump(_: int) -> None:  # an unchanged re-index still takes a new seq_no: our guarded write conflicts
        doc = site.es.get(index=site.indexes.user_room, id="u1")
        site.es.index(index=site.indexes.user_room, id="u1", document=doc["_source"])

    writer = site.writer(bump)
    (outcome,) = write(writer, event)
    assert not outcome.ok and f"after {MAX_ROUNDS} rounds" in outcome.reason
    assert writer.bulks == MAX_ROUNDS
    assert_ok(write(site.writer(), event))  # JetStream's redelivery
    site.assert_oracle([seed, event])


def test_a_room_name_that_keeps_conflicting_fails_the_rename_until_redelivered(site: Views) -> None:
    assert_ok(write(site.writer(), renamed("r1", "first", 100)))

    def bump(_: int) -> None:
        doc = site.es.get(index=site.indexes.room_names, id="r1")
        site.es.index(index=site.indexes.room_names, id="r1", document=doc["_source"])

    (outcome,) = write(site.writer(bump), renamed("r1", "second", 200))
    assert not outcome.ok and "version conflicts on room name r1" in outcome.reason
    assert_ok(write(site.writer(), renamed("r1", "second", 200)))
    assert site.es.get(index=site.indexes.room_names, id="r1")["_source"] == {"roomId": "r1", "name": "second", "nameTs": 200}


# --- renames


def test_a_rename_reaches_every_spotlight_document_of_the_room_past_one_search_page(site: Views) -> None:
    members = [f"u{i}" for i in range(1_200)]  # more than one page (RENAME_PAGE) of the rename's search
    assert_ok(write(site.writer(), added("r1", members, 100, name="old"), add("u0", "r2", 101, name="other")))
    assert_ok(write(site.writer(), renamed("r1", "new", 200)))
    spotlight = site.spotlight()
    assert {(doc["roomName"], doc["nameTs"]) for doc_id, doc in spotlight.items() if doc["roomId"] == "r1"} == {("new", 200)}
    assert sum(doc["roomId"] == "r1" for doc in spotlight.values()) == len(members)
    assert spotlight["u0_r2"]["roomName"] == "other"
    assert site.es.get(index=site.indexes.room_names, id="r1")["_source"] == {"roomId": "r1", "name": "new", "nameTs": 200}


def test_an_add_older_than_the_rename_ends_with_the_new_name(site: Views) -> None:
    warm = site.writer()
    assert_ok(write(warm, add("u1", "r1", 100, name="old"), renamed("r1", "new", 200)))
    assert_ok(write(warm, add("u2", "r1", 150, name="old")))  # names cache knows the rename
    assert_ok(write(site.writer(), add("u3", "r1", 160, name="old")))  # a cold writer reads it back after its write
    spotlight = site.spotlight()
    assert {doc_id: (doc["roomName"], doc["nameTs"]) for doc_id, doc in spotlight.items()} == {
        "u1_r1": ("new", 200), "u2_r1": ("new", 200), "u3_r1": ("new", 200)
    }


def test_a_rename_landing_between_an_adds_read_and_write_is_caught_by_the_re_read(site: Views) -> None:
    writer = site.writer()
    assert_ok(write(writer, renamed("r1", "old", 90)))  # the writer's names cache now says "old"
    renamer = site.writer()
    writer.before_bulk = lambda n: assert_ok(write(renamer, renamed("r1", "new", 200))) if n == 1 else None
    writer.bulks = 0
    assert_ok(write(writer, add("u1", "r1", 150, name="mid")))
    # the rename's sweep ran before our document existed; our re-read of room-names after the write caught it:
    # user-room, then spotlight with the old name, then the spotlight document again with the new one
    assert writer.bulks == 3
    doc = site.spotlight()["u1_r1"]
    assert (doc["roomName"], doc["nameTs"]) == ("new", 200)


def test_a_stale_or_repeated_rename_succeeds_and_changes_nothing(site: Views) -> None:
    assert_ok(write(site.writer(), add("u1", "r1", 100, name="old"), add("u2", "r1", 101, name="old")))
    assert_ok(write(site.writer(), renamed("r1", "new", 200)))
    before = site.snapshot()
    assert_ok(write(site.writer(), renamed("r1", "older", 150)))
    assert_ok(write(site.writer(), renamed("r1", "new", 200)))  # a redelivery
    assert site.snapshot() == before


# --- stale events are successes


@pytest.mark.parametrize(
    ("history", "stale"),
    [
        ([add("u1", "r1", 100)], add("u1", "r1", 100)),  # a duplicate
        ([add("u1", "r1", 100), remove("u1", "r1", 200)], add("u1", "r1", 150)),  # an add older than the removal
        ([add("u1", "r1", 100), remove("u1", "r1", 200)], remove("u1", "r1", 150)),  # a removal older than the last
    ],
    ids=["duplicate-add", "add-before-removal", "older-removal"],
)
@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_a_stale_event_succeeds_and_writes_nothing(site: Views, history: list[Event], stale: Event, cache: str) -> None:
    writer = site.writer()
    for event in history:
        assert_ok(write(writer, event))
    before = site.snapshot()
    assert_ok(write(writer if cache == "warm" else site.writer(), stale))
    assert site.snapshot() == before
    site.assert_oracle([*history, stale])


def test_a_removal_older_than_the_add_changes_no_view_but_outranks_older_adds(site: Views) -> None:
    writer = site.writer()
    assert_ok(write(writer, add("u1", "r1", 100)))
    spotlight_before = {key: value for key, value in site.snapshot().items() if key[0].startswith(site.indexes.spotlight)}
    assert_ok(write(writer, remove("u1", "r1", 50)))
    site.assert_oracle([add("u1", "r1", 100), remove("u1", "r1", 50)])
    assert {key: value for key, value in site.snapshot().items() if key[0].startswith(site.indexes.spotlight)} == spotlight_before
    # user-room did record the removal (roomJoins): an add older than it must not become the shaping add
    assert_ok(write(site.writer(), add("u1", "r1", 40)))
    site.assert_oracle([add("u1", "r1", 100), remove("u1", "r1", 50), add("u1", "r1", 40)])


# --- the writer's cache


def test_warm_and_cold_writers_write_the_same_documents(servers: dict[str, Any], site: Views) -> None:
    events, order = random_history(400, accounts=6, rooms=5, seed=7)
    cold_site = Views(site.es, servers)
    try:
        warm = site.writer()
        for start in range(0, len(order), 20):
            assert_ok(write(warm, *order[start : start + 20]))
            assert_ok(write(cold_site.writer(), *order[start : start + 20]))
        site.assert_oracle(events)
        for view in ("user_room", "spotlight"):
            assert documents(site.es, getattr(site.indexes, view)) == documents(site.es, getattr(cold_site.indexes, view))
    finally:
        cleanup_indexes(site.es, cold_site.site)


def test_a_writer_with_a_tiny_cache_and_tiny_slices_writes_what_the_oracle_says(site: Views, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12's bounds change no document: the cache is only hints, and a batch's accounts are written slice by slice."""
    monkeypatch.setattr(search_writer, "MEMBER_SLICE", 2)
    events, order = random_history(400, accounts=6, rooms=5, seed=11)
    writer = site.writer()
    writer._user_rooms = WriteCache(UserRoomBody, max_bytes=1_000, max_entries=2)  # two small documents at most
    for start in range(0, len(order), 20):
        assert_ok(write(writer, *order[start : start + 20]))
    assert 0 < len(writer._user_rooms) <= 2
    site.assert_oracle(events)


def test_a_writer_with_concurrent_lanes_writes_what_the_oracle_says(site: Views, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lanes (issue 12) write disjoint accounts side by side over shared caches: the same documents as one lane."""
    monkeypatch.setattr(search_writer, "MIN_LANE", 1)
    events, order = random_history(600, accounts=12, rooms=6, seed=13)
    writer = SearchViewsWriter(site.settings, site.indexes, flow="test_writer", lanes=3)
    threads: set[str] = set()
    write_lane = writer._write_lane

    def recorded(*args: Any) -> None:
        threads.add(threading.current_thread().name)
        write_lane(*args)

    monkeypatch.setattr(writer, "_write_lane", recorded)
    for start in range(0, len(order), 40):
        assert_ok(write(writer, *order[start : start + 40]))
    assert len(threads) == 3, threads
    site.assert_oracle(events)


def test_a_cached_copy_changed_behind_the_writers_back_conflicts_and_is_re_read(site: Views) -> None:
    warm, other = site.writer(), site.writer()
    assert_ok(write(warm, add("u1", "r1", 100)))
    assert_ok(write(other, add("u1", "r2", 110)))  # the warm writer's copy of u1 is now stale
    warm.bulks = 0
    assert_ok(write(warm, add("u1", "r3", 120)))
    assert warm.bulks == 3  # the write guarded by the cached seq_no conflicted; the re-read round wrote user-room, then spotlight
    site.assert_oracle([add("u1", "r1", 100), add("u1", "r2", 110), add("u1", "r3", 120)])


def test_a_cached_copy_deleted_behind_the_writers_back_is_re_read_not_trusted(site: Views) -> None:
    warm = site.writer()
    assert_ok(write(warm, add("u1", "r1", 100)))
    site.es.delete(index=site.indexes.user_room, id="u1")  # as after an index rebuilt behind the alias
    assert_ok(write(warm, add("u1", "r1", 100)))  # the cache says "nothing to write": only a read can tell
    site.assert_oracle([add("u1", "r1", 100)])


# --- Elasticsearch unavailable


def test_an_unreachable_elasticsearch_fails_every_part_with_a_reason(site: Views) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = SearchViewsWriter(msgspec.structs.replace(site.settings, url=f"https://127.0.0.1:{port}"), site.indexes, flow="test_writer")
    for _ in range(2):  # and again, after the failure emptied its cache
        outcomes = write(down, added("r1", ["u1", "u2"], 100), remove("u3", "r2", 101), renamed("r1", "new", 200))
        assert len(outcomes) == 4
        assert all(not o.ok and o.reason for o in outcomes), outcomes


def test_a_stale_cached_copy_never_lets_a_spotlight_change_land_without_its_user_room_write(site: Views) -> None:
    """Our cache says u1 is in r1 since 100; another writer meanwhile removed it (200) and re-added it (300).

    Planned from the stale copy, our removal at 200 would delete the spotlight document while its user-room
    write conflicts; re-planned from the real document the removal is stale, and the membership must keep
    its spotlight document (found missing after a rebuild's swap, where every cached copy is stale).
    """
    first, removal, again = add("u1", "r1", 100, name="general"), remove("u1", "r1", 200), add("u1", "r1", 300, name="general")
    ours, other = site.writer(), site.writer()
    assert_ok(write(ours, first))  # cached: u1 in r1 since 100
    assert_ok(write(other, removal))
    assert_ok(write(other, again))
    assert_ok(write(ours, removal))  # a redelivery of the removal reaches the writer with the stale copy
    site.assert_oracle([first, removal, again])
