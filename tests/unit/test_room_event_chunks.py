"""Member events beyond `max_accounts` accounts go out in chunks (events.py): sizes, ids, bytes, and no change below the limit."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.errors import ConfigError
from connectors.settings import load_tuning
from dataflows.room_worker.commands import Publish
from dataflows.room_worker.events import chunked, dedup_id, member_added_publishes, member_removed_publishes
from dataflows.room_worker.handler import BatchReads, RoomHandler
from dataflows.room_worker.outcomes import Outcome, decode_outcome, encode_outcome
from schemas.commands import CommandResult
from schemas.documents import Room, User
from schemas.streams import EVENT_MAX_ACCOUNTS
from tests.unit.test_room_handler import T0, MemoryStore, _user, command

HOME = "s1"
BASE = "0195f0a2-0000-7000-8000-0000000000c1"
MAX_PAYLOAD = 1024 * 1024  # the NATS server's default max_payload
CHANNEL = Room(id="r-big", name="company-wide", type="channel", site_id=HOME, created_at=1, updated_at=1)


def _people(count: int, sites: tuple[str, ...] = (HOME, "s2", "s3"), width: int = 0) -> list[User]:
    """`count` users spread round-robin over `sites`; accounts padded to `width` characters."""
    return [User(id=f"u{i}", account=f"user{i}".ljust(width, "x"), site_id=sites[i % len(sites)]) for i in range(count)]


def _added(members: list[User], limit: int | None, room: Room = CHANNEL, base: str = BASE) -> list[Publish]:
    return member_added_publishes(
        room=room, members=members, requester_account="alice", joined_at=10, history_shared_since=0, now_ms=20, dedup_base=base, max_accounts=limit
    )


def _removed(members: list[User], limit: int | None) -> list[Publish]:
    return member_removed_publishes(
        home=HOME, room_id="r-big", members=members, inner_type="member_removed", org_id="org-x", now_ms=30, dedup_base=BASE, max_accounts=limit
    )


def _dest(publish: Publish) -> str:
    envelope: dict[str, Any] = json.loads(publish.data)
    return str(envelope["destSiteId"])


def _inner(publish: Publish) -> dict[str, Any]:
    inner: dict[str, Any] = json.loads(base64.b64decode(json.loads(publish.data)["payload"]))
    return inner


def _lanes(publishes: list[Publish]) -> dict[str, list[Publish]]:
    lanes: dict[str, list[Publish]] = {}
    for publish in publishes:
        lanes.setdefault(_dest(publish), []).append(publish)
    return lanes


@given(st.integers(0, 200), st.integers(1, 60))
def test_chunks_are_full_slices_then_the_rest_in_order(count: int, limit: int) -> None:
    accounts = [f"a{i}" for i in range(count)]
    parts = chunked(accounts, limit)
    assert [a for part in parts for a in part] == accounts
    assert len(parts) == max(1, -(-count // limit))
    assert all(len(part) == limit for part in parts[:-1]) and 0 < len(parts[-1]) <= limit or count == 0


def test_chunks_need_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        chunked(["a"], 0)


@pytest.mark.parametrize("make", [_added, _removed], ids=["added", "removed"])
@given(count=st.integers(1, 120), limit=st.integers(1, 40))
def test_every_account_once_per_lane_in_chunks_with_their_own_ids(make: Any, count: int, limit: int) -> None:
    members = _people(count)
    whole = _lanes(make(members, None))
    split = make(members, limit)
    lanes = _lanes(split)
    assert list(lanes) == list(whole), "the same lanes, local lane first"
    for dest, publishes in lanes.items():
        (single,) = whole[dest]
        everyone = _inner(single)["accounts"]
        assert [a for p in publishes for a in _inner(p)["accounts"]] == everyone, f"{dest}: every account once, in order"
        assert len(publishes) == -(-len(everyone) // limit) and all(len(_inner(p)["accounts"]) <= limit for p in publishes)
        assert [p.msg_id for p in publishes] == [dedup_id(BASE, dest, k) for k in range(len(publishes))]
        assert publishes[0].msg_id == single.msg_id == f"{BASE}:{dest}", "chunk 0 keeps today's id"
        assert {p.subject for p in publishes} == {single.subject}
        # the chunks differ from the single event only in their accounts: same timestamps, room, requester, ...
        rest = {k: v for k, v in _inner(single).items() if k != "accounts"}
        assert all({k: v for k, v in _inner(p).items() if k != "accounts"} == rest for p in publishes)
        assert all(json.loads(p.data)["timestamp"] == json.loads(single.data)["timestamp"] for p in publishes)
    assert len({p.msg_id for p in split}) == len(split)
    assert make(members, limit) == split, "deterministic: a re-decided command publishes the same chunks"


@pytest.mark.parametrize("make", [_added, _removed], ids=["added", "removed"])
@given(count=st.integers(1, 60), spare=st.integers(0, 50))
def test_at_or_below_the_limit_the_publishes_are_byte_identical(make: Any, count: int, spare: int) -> None:
    members = _people(count)
    assert make(members, count + spare) == make(members, None)


def test_the_handler_splits_at_its_limit_and_not_below_it() -> None:
    """Deciding through the handler (test_room_handler's in-memory store): its default keeps the Go vectors' bytes
    (test_room_handler checks them through it), a small limit splits the lanes of a create and of an org removal."""
    people = [_user(f"p{i}", HOME if i % 2 else "s2", sect="org-big") for i in range(9)]
    store = MemoryStore([_user("alice"), *people])
    ids = itertools.count(1)
    small = RoomHandler(store, site=HOME, clock=lambda: T0, new_id=lambda: f"id{next(ids)}", event_max_accounts=3)
    create = {"name": "big", "users": [], "orgs": ["org-big"], "roomId": "r-big", "requesterAccount": "alice", "timestamp": T0}
    outcome = small.decide(command("create", create, BASE), BatchReads())
    store.apply(outcome)
    lanes = {dest: [_inner(p)["accounts"] for p in publishes] for dest, publishes in _lanes(outcome.publishes).items()}
    assert lanes == {
        HOME: [["alice", "p0", "p1"], ["p2", "p3", "p4"], ["p5", "p6", "p7"], ["p8"]],
        "s2": [["p0", "p2", "p4"], ["p6", "p8"]],
    }
    assert [p.msg_id for p in outcome.publishes] == [*(dedup_id(BASE, HOME, k) for k in range(4)), dedup_id(BASE, "s2", 0), dedup_id(BASE, "s2", 1)]
    remove = {"roomId": "r-big", "requester": "alice", "orgId": "org-big", "timestamp": T0 + 1}
    removed = small.decide(command("remove", remove), BatchReads())
    assert [len(_inner(p)["accounts"]) for p in removed.publishes] == [3, 3, 3, 3, 2]
    assert {a for p in removed.publishes if _dest(p) == HOME for a in _inner(p)["accounts"]} == {u.account for u in people}


def test_ids_never_collide_with_chunk_0_ids_of_any_base() -> None:
    """A payload seed may hold `:`; after the last `:` a chunk id carries `#`, a chunk 0 id a bare site id."""
    ids = {dedup_id(base, dest, k) for base in ("r:alice:5", "r:alice:5:s2", "r", "r:alice") for dest in ("s2", "1", "5") for k in range(4)}
    assert len(ids) == 4 * 3 * 4


def test_dm_and_botdm_are_never_split() -> None:
    dm = Room(id="d1", name="", type="dm", site_id=HOME, created_at=1, updated_at=1)
    bot = Room(id="b1", name="", type="botDM", site_id=HOME, created_at=1, updated_at=1)
    pair = [User(id="ua", account="alice", site_id=HOME), User(id="uc", account="carol", site_id="s2")]
    assert _added(pair, 1, room=dm) == _added(pair, None, room=dm)
    assert [_inner(p)["accounts"] for p in _added(pair, 1, room=dm)] == [["alice", "carol"], ["carol"]]
    helper = [User(id="ua", account="alice", site_id=HOME), User(id="uh", account="helper.bot", site_id=HOME)]
    assert _added(helper, 1, room=bot) == _added(helper, None, room=bot)


def test_a_huge_add_stays_far_below_the_max_payload() -> None:
    """20,000 members with 64-character accounts: one event would be about 2 MB, every chunk is under a tenth of 1 MB."""
    members = _people(20_000, sites=(HOME, "s2"), width=64)
    assert max(len(p.data) for p in _added(members, None)) > MAX_PAYLOAD
    split = _added(members, EVENT_MAX_ACCOUNTS)
    # per account: 64 characters, quotes and comma, base64'd once (4/3); plus the room's fields
    bound = EVENT_MAX_ACCOUNTS * 67 * 4 // 3 + 2_000
    assert max(len(p.data) for p in split) <= bound < MAX_PAYLOAD // 10
    assert len(split) == 20 + 10
    assert max(len(p.data) for p in _removed(members, EVENT_MAX_ACCOUNTS)) <= bound


def test_the_recorded_outcome_carries_every_chunk_as_decided() -> None:
    """A retry or redelivery republishes from the record (runner.py), so the same chunks with the same ids."""
    publishes = _added(_people(25), 4)
    result = CommandResult(request_id=BASE, operation="create", status="ok", room_id="r-big", timestamp=20)
    outcome = Outcome(request_key=BASE, room_id="r-big", requester="alice", publishes=publishes, result=result)
    assert decode_outcome(encode_outcome(outcome)).publishes == publishes


def test_the_limit_is_a_positive_setting_defaulting_to_1000() -> None:
    assert load_tuning({}).event_max_accounts == EVENT_MAX_ACCOUNTS == 1_000
    assert load_tuning({"CHATFED_EVENT_MAX_ACCOUNTS": "50"}).event_max_accounts == 50
    with pytest.raises(ConfigError, match="CHATFED_EVENT_MAX_ACCOUNTS"):
        load_tuning({"CHATFED_EVENT_MAX_ACCOUNTS": "0"})
