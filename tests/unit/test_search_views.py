"""search_sync's pure logic: parsing to parts, last-write-wins user-room, spotlight derivation, renames, bulk outcomes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.search_sync import parts as search_parts
from dataflows.search_sync import views as views
from dataflows.search_sync.parts import MemberChange, RoomRename
from dataflows.search_sync.views import ItemOutcome, RoomName
from schemas.carriers import AckHandle, Settle, Verdict
from testkit.search_oracle import (
    Event,
    MemoryViews,
    added,
    delivery,
    envelope,
    event_bytes,
    oracle,
    removed,
    renamed,
)

VECTORS = sorted((Path(__file__).parents[3] / "shared" / "vectors").glob("*.json"))


def _parts(data: bytes) -> list[search_parts.Part]:
    parsed = search_parts.parse(delivery(data))
    assert search_parts.is_parts(parsed), parsed
    return parsed


def _poison_reason(data: bytes) -> str:
    parsed = search_parts.parse(delivery(data))
    assert isinstance(parsed, Settle) and parsed.verdict is Verdict.DEAD
    return parsed.reason


def _change(room: str, ts: int, *, added: bool = True, hss: int = 0, account: str = "alice") -> MemberChange:
    parts = _parts(added_bytes(room, account, ts, hss) if added else removed(room, [account], ts))
    assert isinstance(parts[0], MemberChange)
    return parts[0]


def added_bytes(room: str, account: str, ts: int, hss: int = 0) -> bytes:
    return added(room, [account], ts, hss=hss)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "envelope"),
        (b'{"type":"member_added","siteId":"s1","destSiteId":"s1","payload":"@@@","timestamp":5}', "envelope"),
        (b'{"type":"member_added","siteId":"s1","destSiteId":"s1","payload":"","timestamp":0}', "envelope"),
        (envelope("member_added", views.RoomName(room_id="r", name="x", name_ts=1), 5), "member_added"),
        (added("r1", [""], 5), "member_added"),
        (added("r1", [], 5), "no accounts"),
        (removed("r1", [], 5), "no accounts"),
        (renamed("r1", "", 5), "empty newName"),
        (envelope("role_updated", views.RoomName(room_id="r", name="x", name_ts=1), 5), "unexpected event type 'role_updated'"),
    ],
    ids=["bad-json", "bad-base64", "zero-timestamp", "missing-fields", "empty-account", "no-accounts", "remove-no-accounts", "empty-name", "unknown-type"],
)
def test_poison_names_its_reason(data: bytes, reason: str) -> None:
    assert reason in _poison_reason(data)


def test_member_added_fans_out_one_part_per_distinct_account() -> None:
    parts = _parts(added("r1", ["alice", "bob", "alice"], 10))
    assert [search_parts.part_key(p) for p in parts] == ["alice", "bob"]
    assert all(p.ack == AckHandle(reply=parts[0].ack.reply, event_ms=10) and p.ts == 10 for p in parts)


def test_dm_parts_are_named_after_the_counterpart() -> None:
    both = _parts(added("d1", ["alice", "bob"], 10, room_type="dm", name=""))
    one = _parts(added("d1", ["carol"], 10, room_type="dm", name="", requester="alice"))
    assert [(p.account, p.room_name) for p in both if isinstance(p, MemberChange)] == [("alice", "bob"), ("bob", "alice")]
    assert [(p.account, p.room_name) for p in one if isinstance(p, MemberChange)] == [("carol", "alice")]


def test_rename_is_one_part_keyed_by_room() -> None:
    (part,) = _parts(renamed("r1", "new", 7))
    assert isinstance(part, RoomRename) and search_parts.part_key(part) == "room r1"


def test_lww_guard_sequence() -> None:
    """The reference's TestUserRoomSync_LWWGuard: add@2000, stale add@1000, stale remove@1500, remove@3000, add@4000, stale add@2500."""
    doc = None
    steps: list[tuple[MemberChange, list[str], int]] = [
        (_change("r", 2000), ["r"], 2000),
        (_change("r", 1000), ["r"], 2000),
        (_change("r", 1500, added=False), ["r"], 2000),
        (_change("r", 3000, added=False), [], 3000),
        (_change("r", 4000), ["r"], 4000),
        (_change("r", 2500), ["r"], 4000),
    ]
    for change, rooms, stamp in steps:
        doc = views.apply_to_user_room(doc, "alice", [change])
        assert (doc.rooms, doc.room_timestamps["r"]) == (rooms, stamp)


def test_restricted_room_is_never_in_rooms_too() -> None:
    doc = views.apply_to_user_room(None, "alice", [_change("r", 10, hss=9), _change("r", 20)])
    assert (doc.rooms, doc.restricted_rooms) == ([], {"r": 9})
    doc = views.apply_to_user_room(doc, "alice", [_change("r", 30, added=False), _change("r", 40)])
    assert (doc.rooms, doc.restricted_rooms) == (["r"], {})


def test_remove_on_unknown_account_keeps_a_tombstone_so_a_late_add_stays_out() -> None:
    doc = views.apply_to_user_room(None, "alice", [_change("r", 20, added=False)])
    doc = views.apply_to_user_room(doc, "alice", [_change("r", 10)])
    assert (doc.rooms, doc.room_timestamps) == ([], {"r": 20})


def test_created_and_updated_do_not_depend_on_arrival_order() -> None:
    changes = [_change("r", 30), _change("q", 10, added=False), _change("r", 20)]
    forward, backward = MemoryViews(), MemoryViews()
    forward.apply("alice", changes[:1])
    forward.apply("alice", changes[1:])
    backward.apply("alice", changes[2:])
    backward.apply("alice", changes[:2])
    assert forward.user_rooms == backward.user_rooms and forward.spotlight == backward.spotlight
    assert (forward.user_rooms["alice"].created_at, forward.user_rooms["alice"].updated_at) == (10, 30)


def test_plan_of_n_changes_for_one_account_is_one_user_room_write() -> None:
    changes = [_change(f"r{i}", 100 + i) for i in range(50)]
    plan = views.plan_account("alice", changes, None, {}, {})
    assert plan.user_room is not None and len(plan.user_room.rooms) == 50 and len(plan.upserts) == 50


def test_replayed_changes_write_nothing() -> None:
    memory = MemoryViews()
    changes = [_change("r1", 10), _change("r2", 11, hss=5)]
    memory.apply("alice", changes)
    again = views.plan_account("alice", changes, memory.user_rooms["alice"], memory.spotlight, memory.names)
    assert again == views.AccountPlan(user_room=None, upserts=[], deletes=[])


def test_stale_add_after_remove_writes_no_spotlight() -> None:
    memory = MemoryViews()
    memory.apply("alice", [_change("r", 10)])
    memory.apply("alice", [_change("r", 30, added=False)])
    plan = views.plan_account("alice", [_change("r", 20)], memory.user_rooms["alice"], memory.spotlight, memory.names)
    assert (plan.upserts, plan.deletes) == ([], [])
    assert memory.spotlight == {}


def test_add_arriving_after_a_newer_rename_takes_the_renamed_name() -> None:
    memory = MemoryViews()
    memory.apply("alice", [_change("r", 10)])
    memory.rename(RoomRename(ack=AckHandle(reply="r"), room_id="r", name="renamed", ts=50))
    assert memory.spotlight["alice_r"].room_name == "renamed"
    memory.apply("bob", [_change("r", 20, account="bob")])  # carries the old name
    assert memory.spotlight["bob_r"].room_name == "renamed"
    memory.rename(RoomRename(ack=AckHandle(reply="r"), room_id="r", name="older", ts=40))
    assert {doc.room_name for doc in memory.spotlight.values()} == {"renamed"}


def test_rename_leaves_dm_names_alone() -> None:
    memory = MemoryViews()
    (dm,) = _parts(added("d", ["carol"], 10, room_type="dm", name="", requester="alice"))
    assert isinstance(dm, MemberChange)
    memory.apply("carol", [dm])
    memory.rename(RoomRename(ack=AckHandle(reply="r"), room_id="d", name="x", ts=50))
    assert memory.spotlight["carol_d"].room_name == "alice"


def test_newest_name_is_last_write_wins() -> None:
    stored = RoomName(room_id="r", name="b", name_ts=20)
    older = RoomRename(ack=AckHandle(reply="r"), room_id="r", name="a", ts=10)
    newer = RoomRename(ack=AckHandle(reply="r"), room_id="r", name="c", ts=30)
    assert views.newest_name(stored, [older]) == stored
    assert views.newest_name(stored, [newer, older]) == RoomName(room_id="r", name="c", name_ts=30)
    assert views.newest_name(None, []) is None


@pytest.mark.parametrize(
    ("action", "status", "error_type", "expected"),
    [
        ("create", 201, "", ItemOutcome.DONE),
        ("index", 200, "", ItemOutcome.DONE),
        ("delete", 200, "", ItemOutcome.DONE),
        ("delete", 404, "", ItemOutcome.DONE),
        ("create", 409, "version_conflict_engine_exception", ItemOutcome.CONFLICT),
        ("delete", 409, "version_conflict_engine_exception", ItemOutcome.CONFLICT),
        ("index", 429, "es_rejected_execution_exception", ItemOutcome.RETRY),
        ("index", 503, "unavailable_shards_exception", ItemOutcome.RETRY),
        ("index", 400, "mapper_parsing_exception", ItemOutcome.FATAL),
        ("index", 404, "index_not_found_exception", ItemOutcome.FATAL),
        ("delete", 404, "index_not_found_exception", ItemOutcome.FATAL),
    ],
)
def test_classify_bulk_item(action: str, status: int, error_type: str, expected: ItemOutcome) -> None:
    assert views.classify_bulk_item(action, status, error_type) is expected


ACCOUNTS = st.sampled_from(["alice", "bob", "carol"])
ROOMS = st.sampled_from(["r1", "r2", "r3"])
NAMES = st.sampled_from(["", "sixteen", "sixteen-b"])


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Event], list[list[Event]]]:
    """Distinct-timestamp events, delivered shuffled with duplicates and cut into random batches."""
    shapes = draw(st.lists(st.tuples(ACCOUNTS, ROOMS, st.booleans(), st.booleans(), st.integers(1, 9), NAMES), min_size=1, max_size=30))
    stamps = draw(st.permutations(range(1, len(shapes) + 1)))
    events = [
        # adds of one membership disagree on joinedAt, restriction and name: the oldest must shape it
        Event(account, room, ts * 10, add, ts * 10 - 5 if add and restricted else 0, ts * 10 - lag if add else 0, name if add else "")
        for (account, room, add, restricted, lag, name), ts in zip(shapes, stamps)
    ]
    deliveries = draw(st.permutations(events + draw(st.lists(st.sampled_from(events), max_size=10))))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(deliveries) - 1, 1)), max_size=5)))
    batches = [deliveries[a:b] for a, b in zip([0, *cuts], [*cuts, len(deliveries)])]
    return events, [batch for batch in batches if batch]


@settings(max_examples=300, deadline=None)
@given(histories())
def test_any_order_with_duplicates_equals_timestamp_order(history: tuple[list[Event], list[list[Event]]]) -> None:
    events, batches = history
    memory = MemoryViews()
    for batch in batches:
        by_account: dict[str, list[MemberChange]] = {}
        for event in batch:
            for part in _parts(event_bytes(event)):
                assert isinstance(part, MemberChange)
                by_account.setdefault(part.account, []).append(part)
        for account, changes in by_account.items():
            memory.apply(account, changes)
    expected_rooms, expected_spotlight = oracle(events)
    got = {a: {"rooms": d.rooms, "restrictedRooms": d.restricted_rooms, "roomTimestamps": d.room_timestamps} for a, d in memory.user_rooms.items()}
    assert got == expected_rooms
    assert {doc_id: {"roomName": doc.room_name, "joinedAt": doc.joined_at} for doc_id, doc in memory.spotlight.items()} == expected_spotlight


def _vector(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


SEARCH_VECTORS = [p for p in VECTORS if {"spotlight", "userRoom"} & set(_vector(p)["expect"])]


def check_vector_expectations(expect: dict[str, Any], user_rooms: dict[str, dict[str, Any]], spotlight: dict[str, dict[str, Any]]) -> None:
    """Every `spotlight` / `userRoom` expectation of a vector holds for the given stored documents (wire keys)."""
    wanted = expect.get("spotlight")
    if wanted is None:
        pass
    elif isinstance(wanted, dict):  # {doc_id: "absent"}
        for doc_id in wanted:
            assert doc_id not in spotlight
    else:
        assert sorted(spotlight) == sorted(item["_id"] for item in wanted)
        for item in wanted:
            assert {k: spotlight[item["_id"]][k] for k in item if k != "_id"} == {k: v for k, v in item.items() if k != "_id"}
    for account, fields in expect.get("userRoom", {}).items():
        assert {k: user_rooms[account][k] for k in fields} == fields


@pytest.mark.parametrize("path", SEARCH_VECTORS, ids=[p.stem for p in SEARCH_VECTORS])
def test_vector_gives_expected_documents(path: Path) -> None:
    vector = _vector(path)
    assert base64.b64decode(vector["envelope"]["payload"]) == vector["innerBytes"].encode()
    memory = MemoryViews()
    parts = _parts(vector["data"].encode())
    for account in {p.account for p in parts if isinstance(p, MemberChange)}:
        memory.apply(account, [p for p in parts if isinstance(p, MemberChange) and p.account == account])
    check_vector_expectations(
        vector["expect"],
        {a: msgspec.to_builtins(d) for a, d in memory.user_rooms.items()},
        {i: msgspec.to_builtins(d) for i, d in memory.spotlight.items()},
    )


AGGREGATE = "chat.inbox.s2.aggregate.member_added"
FROM_S1 = {"Nats-Stream-Source": "OUTBOX_s1:7GOAUEZh 3 outbox.s1.to.s2.> chat.inbox.s2.aggregate.> outbox.s1.to.s2.member_added 6NXfE8fj"}
FROM_S3 = {"Nats-Stream-Source": "OUTBOX_s3 3 outbox.s3.to.s2.> chat.inbox.s2.aggregate.> outbox.s3.to.s2.member_added"}


@pytest.mark.parametrize(
    ("subject", "headers", "data", "reason"),
    [
        (AGGREGATE, None, added("r1", ["alice"], 10), "origin unproven"),
        (AGGREGATE, FROM_S3, added("r1", ["alice"], 10), "origin mismatch"),
        ("chat.inbox.s2.member_added", None, added("r.1", ["alice"], 10), "invalid room id"),
        ("chat.inbox.s2.member_added", None, added("r1", ["al ice"], 10), "invalid account"),
        ("chat.inbox.s2.member_added", None, removed("r1", ["a>"], 10), "invalid account"),
    ],
    ids=["aggregate-without-source", "claims-another-origin", "dotted-room", "spaced-account", "wildcard-account"],
)
def test_untrusted_events_are_poison(subject: str, headers: dict[str, str] | None, data: bytes, reason: str) -> None:
    parsed = search_parts.parse(msgspec.structs.replace(delivery(data, subject=subject), headers=headers))
    assert isinstance(parsed, Settle) and parsed.verdict is Verdict.DEAD
    assert reason in parsed.reason


def test_sourced_event_from_its_home_site_is_applied() -> None:
    parsed = search_parts.parse(msgspec.structs.replace(delivery(added("r1", ["alice", "helper.bot"], 10), subject=AGGREGATE), headers=FROM_S1))
    assert search_parts.is_parts(parsed) and [p.account for p in parsed] == ["alice", "helper.bot"]  # type: ignore[union-attr]
