"""The rebuild's in-memory fold (fold.py): whatever the chunking and the takes, a store fed its changes equals the guarded path's views."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.fold import Changes, ViewsFold
from dataflows.search_sync.parts import MemberChange, RoomRename
from testkit.search_oracle import Event, MemoryViews, delivery, event_bytes, oracle, renamed

ACCOUNTS = st.sampled_from(["alice", "bob", "carol"])
ROOMS = st.sampled_from(["r1", "r2", "r3"])
NAMES = st.sampled_from(["", "sixteen", "sixteen-b"])


class Store:
    """What Elasticsearch holds after the rebuild's plain index / delete operations."""

    def __init__(self) -> None:
        self.user_rooms: dict[str, object] = {}
        self.spotlight: dict[str, object] = {}
        self.names: dict[str, object] = {}

    def write(self, changes: Changes) -> None:
        self.user_rooms |= changes.user_rooms
        self.spotlight |= changes.spotlight
        self.names |= changes.names
        for doc_id in changes.spotlight_deletes:
            self.spotlight.pop(doc_id, None)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Event], list[bytes], list[int], list[int]]:
    """Member events and renames (distinct timestamps), shuffled with duplicates; fold chunk cuts and take points."""
    shapes = draw(st.lists(st.tuples(ACCOUNTS, ROOMS, st.booleans(), st.booleans(), st.integers(1, 9), NAMES), min_size=1, max_size=30))
    renames = draw(st.lists(st.tuples(ROOMS, st.sampled_from(["n1", "n2", "n3"])), max_size=5))
    stamps = draw(st.permutations(range(1, len(shapes) + len(renames) + 1)))
    events = [
        Event(account, room, ts * 10, add, ts * 10 - 5 if add and restricted else 0, ts * 10 - lag if add else 0, name if add else "")
        for (account, room, add, restricted, lag, name), ts in zip(shapes, stamps)
    ]
    messages = [event_bytes(e) for e in events] + [renamed(room, name, ts * 10) for (room, name), ts in zip(renames, stamps[len(shapes):])]
    order = draw(st.permutations(messages + draw(st.lists(st.sampled_from(messages), max_size=10))))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(order) - 1, 1)), max_size=5)))
    takes = sorted(draw(st.sets(st.integers(0, len(cuts)), max_size=3)))
    return events, order, cuts, takes


def _parts(data: bytes) -> list[search_parts.Part]:
    parsed = search_parts.parse(delivery(data))
    assert search_parts.is_parts(parsed), parsed
    return parsed


@settings(max_examples=100, deadline=None)
@given(deliveries())
def test_fold_in_any_chunks_with_any_takes_equals_the_guarded_path(case: tuple[list[Event], list[bytes], list[int], list[int]]) -> None:
    events, order, cuts, takes = case
    fold, store, memory = ViewsFold(), Store(), MemoryViews()
    chunks = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]
    for index, chunk in enumerate(chunks):
        fold.apply([part for data in chunk for part in _parts(data)])
        if index in takes:
            store.write(fold.take())
    store.write(fold.take())
    for data in order:  # the guarded path's model, one message at a time in delivery order
        for part in _parts(data):
            if isinstance(part, MemberChange):
                memory.apply(part.account, [part])
            else:
                assert isinstance(part, RoomRename)
                memory.rename(part)
    assert store.user_rooms == memory.user_rooms
    assert store.spotlight == memory.spotlight
    assert store.names == memory.names
    if not any(b"room_renamed" in data for data in order):
        expected_rooms, expected_spotlight = oracle(events)
        got = {a: {"rooms": d.rooms, "restrictedRooms": d.restricted_rooms, "roomTimestamps": d.room_timestamps} for a, d in fold.user_rooms.items()}
        assert got == expected_rooms
        assert {i: {"roomName": d.room_name, "joinedAt": d.joined_at} for i, d in fold.spotlight.items()} == expected_spotlight
