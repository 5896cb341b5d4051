"""Which `member_added` shapes a membership: the oldest one since the last removal (dataflows/search_sync/views.py docstring)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.search_sync import build_flow, views
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.parts import MemberChange
from schemas.carriers import Settle, Verdict
from schemas.documents import UserRoomDoc
from testkit.search_oracle import Event, MemoryViews, delivery, event_bytes, oracle

T = 1_000
# the two adds of one (room, account), no removal between them
A = Event("alice", "r", T, True, 0, 900, "sixteen")
B = Event("alice", "r", T + 1, True, T - 50, T - 50, "sixteen-b")
REMOVE = Event("alice", "r", T + 2, False)
READD = Event("alice", "r", T + 3, True, T + 3, T + 3, "sixteen-c")
BETWEEN = Event("alice", "r", T + 1, False)  # a removal between A and a later add
LATER = Event("alice", "r", T + 2, True, 0, T + 2, "sixteen-b")


def _changes(events: list[Event]) -> list[MemberChange]:
    changes: list[MemberChange] = []
    for event in events:
        parsed = search_parts.parse(delivery(event_bytes(event)))
        assert search_parts.is_parts(parsed)
        changes += [p for p in parsed if isinstance(p, MemberChange)]
    return changes


def _state(memory: MemoryViews) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
    user_rooms = {a: {"rooms": d.rooms, "restrictedRooms": d.restricted_rooms, "roomTimestamps": d.room_timestamps} for a, d in memory.user_rooms.items()}
    return user_rooms, {i: {"roomName": d.room_name, "joinedAt": d.joined_at} for i, d in memory.spotlight.items()}


def _apply(batches: list[list[Event]]) -> MemoryViews:
    memory = MemoryViews()
    for batch in batches:
        memory.apply("alice", _changes(batch))
    return memory


def _splits(order: tuple[Event, ...]) -> list[list[list[Event]]]:
    """Every way to cut a delivery order into consecutive batches."""
    found = []
    for mask in range(2 ** (len(order) - 1)):
        batches, current = [], [order[0]]
        for index, event in enumerate(order[1:]):
            if mask >> index & 1:
                batches.append(current)
                current = []
            current.append(event)
        found.append([*batches, current])
    return found


@pytest.mark.parametrize("batches", [[[A, B]], [[B, A]], [[A], [B]], [[B], [A]], [[B], [A], [B], [A]]], ids=["AB", "BA", "A|B", "B|A", "replays"])
def test_the_older_add_shapes_the_membership_whatever_the_order(batches: list[list[Event]]) -> None:
    memory = _apply(batches)
    doc = memory.user_rooms["alice"]
    spot = memory.spotlight["alice_r"]
    assert (doc.rooms, doc.restricted_rooms, doc.room_timestamps) == (["r"], {}, {"r": T + 1})  # A: unrestricted; stamp: newest
    assert (spot.joined_at, spot.room_name) == (900, "sixteen-b")  # A's joinedAt; the newest add's name


def test_a_newer_add_changes_no_shape_but_advances_the_timestamp() -> None:
    memory = _apply([[A]])
    first = memory.spotlight["alice_r"]
    memory.apply("alice", _changes([B]))
    assert memory.user_rooms["alice"].room_timestamps == {"r": T + 1}
    assert memory.user_rooms["alice"].restricted_rooms == {}
    assert memory.spotlight["alice_r"].joined_at == first.joined_at


def test_an_older_add_arriving_late_reshapes() -> None:
    memory = _apply([[B]])
    assert memory.user_rooms["alice"].restricted_rooms == {"r": T - 50}
    memory.apply("alice", _changes([A]))
    assert (memory.user_rooms["alice"].rooms, memory.user_rooms["alice"].restricted_rooms) == (["r"], {})
    assert memory.spotlight["alice_r"].joined_at == 900


def test_a_late_removal_between_two_adds_hands_the_membership_to_the_later_add() -> None:
    memory = _apply([[A], [LATER]])
    assert memory.spotlight["alice_r"].joined_at == 900
    memory.apply("alice", _changes([BETWEEN]))
    assert memory.spotlight["alice_r"].joined_at == T + 2
    assert memory.user_rooms["alice"].room_timestamps == {"r": T + 2}


def test_an_add_at_or_before_the_last_removal_stays_a_no_op() -> None:
    memory = _apply([[REMOVE]])
    memory.apply("alice", _changes([A, B]))
    assert (memory.user_rooms["alice"].rooms, memory.user_rooms["alice"].room_timestamps, memory.spotlight) == ([], {"r": T + 2}, {})


def test_a_removal_and_an_add_at_the_same_instant_end_removed_whatever_the_order() -> None:
    same = Event("alice", "r", T + 1, False)
    assert _apply([[B], [same]]).spotlight == {} == _apply([[same], [B]]).spotlight
    assert _apply([[A], [B], [same]]).user_rooms["alice"].rooms == []


@pytest.mark.parametrize(
    "events",
    [[A, B], [A, B, REMOVE], [A, B, REMOVE, READD], [A, BETWEEN, LATER], [B, REMOVE, READD]],
    ids=["two-adds", "then-removed", "removed-and-readded", "removal-between", "restricted-then-readded"],
)
def test_every_order_and_batching_equals_the_timestamp_order_oracle(events: list[Event]) -> None:
    expected = oracle(events)
    for order in itertools.permutations(events):
        for batches in _splits(order):
            assert _state(_apply(batches)) == expected, batches


def test_room_joins_is_stored_not_part_of_the_contract_fields() -> None:
    doc = views.apply_to_user_room(None, "alice", _changes([A, B]))
    wire = msgspec.json.decode(msgspec.json.encode(doc))
    assert wire["roomJoins"] == {"r": [0, [[T, 900, 0, "channel", "s1"], [T + 1, T - 50, T - 50, "channel", "s1"]]]}
    assert msgspec.convert(wire, views.UserRoomBody) == doc
    assert {k: wire[k] for k in ("rooms", "restrictedRooms", "roomTimestamps")} == {"rooms": ["r"], "restrictedRooms": {}, "roomTimestamps": {"r": T + 1}}


def test_the_usual_membership_has_no_room_joins_entry_and_takes_its_shape_from_spotlight() -> None:
    memory = _apply([[B]])
    assert memory.user_rooms["alice"].room_joins == {}  # one add, no removal before: nothing to remember
    memory.apply("alice", _changes([A]))  # demotes B: its shape comes back from B's spotlight document
    joins = memory.user_rooms["alice"].room_joins["r"]
    assert [(j.ts, j.joined_at, j.history_shared_since) for j in joins.adds] == [(T, 900, 0), (T + 1, T - 50, T - 50)]
    memory.apply("alice", _changes([Event("alice", "r", T, False)]))  # a late removal at A: B shapes again
    assert memory.user_rooms["alice"].restricted_rooms == {"r": T - 50}
    assert memory.spotlight["alice_r"].joined_at == T - 50


def test_a_document_written_before_room_joins_reads_as_one_add_at_its_stamp() -> None:
    legacy = UserRoomDoc(user_account="alice", rooms=["r"], room_timestamps={"r": T + 1}, created_at=T + 1, updated_at=T + 1)
    doc = views.apply_to_user_room(legacy, "alice", _changes([Event("alice", "r", T, True, T, T)]))  # older: reshapes
    assert (doc.rooms, doc.restricted_rooms, doc.room_timestamps) == ([], {"r": T}, {"r": T + 1})
    doc = views.apply_to_user_room(doc, "alice", _changes([REMOVE, READD]))
    assert (doc.rooms, doc.restricted_rooms, doc.room_timestamps) == ([], {"r": T + 3}, {"r": T + 3})


def test_through_the_flow_a_late_older_add_reshapes() -> None:
    memory = MemoryViews()
    for batch in ([B], [A]):
        out: list[Settle] = []
        source = [delivery(event_bytes(e), i) for i, e in enumerate(batch, 1)]
        run_main(build_flow(TestingSource(source), memory.write, TestingSink(out), flush=timedelta(milliseconds=5), flush_max=100))
        assert [s.verdict for s in out] == [Verdict.ACK]
    assert _state(memory) == oracle([A, B])
