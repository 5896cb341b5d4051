"""search_sync and inbox_mirror treat a chunk as an ordinary event listing fewer accounts (pure rules, no servers).

The chunks are room_worker's own (events.py). Redelivered (duplicates) and in any order, interleaved with removals
of some of the accounts (one at the add's very instant), they give the views the single unchunked event gives, and
the oldest add still shapes a membership although the chunks share one timestamp. dm / botDM are never split, so the
counterpart naming (the other account listed, else the requester) reads the same events as before.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.inbox_mirror import rules as mirror
from dataflows.room_worker.commands import Publish
from dataflows.room_worker.events import member_added_publishes, member_removed_publishes
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.parts import MemberChange
from schemas.carriers import Delivery
from schemas.documents import Room, User
from testkit.search_oracle import MemoryViews

HOME, REMOTE = "s1", "s2"
T = 1_767_225_600_000
LIMIT = 5
ACCOUNTS = [f"u{i:02}" for i in range(14)]
SOURCED = {"Nats-Stream-Source": f"OUTBOX_{HOME} 1 outbox.{HOME}.to.{REMOTE}.> chat.inbox.{REMOTE}.aggregate.> x"}


def _room(name: str, room_type: str = "channel", room_id: str = "r") -> Room:
    return Room(id=room_id, name=name, type=room_type, site_id=HOME, created_at=1, updated_at=1)


def _members(accounts: list[str]) -> list[User]:
    """Even accounts homed here, odd ones on the remote site (so both lanes carry some)."""
    return [User(id=f"id-{a}", account=a, site_id=REMOTE if int(a[1:]) % 2 else HOME) for a in accounts]


def _add(accounts: list[str], ts: int, limit: int | None, *, name: str = "big", hss: int = 0, joined: int = 0, base: str = "") -> list[Publish]:
    return member_added_publishes(
        room=_room(name), members=_members(accounts), requester_account="alice", joined_at=joined or ts - 1,
        history_shared_since=hss, now_ms=ts, dedup_base=base or f"add-{ts}", max_accounts=limit,
    )


def _remove(accounts: list[str], ts: int, limit: int | None) -> list[Publish]:
    return member_removed_publishes(
        home=HOME, room_id="r", members=_members(accounts), inner_type="member_removed", org_id="", now_ms=ts, dedup_base=f"rm-{ts}", max_accounts=limit
    )


def history(limit: int | None) -> list[Publish]:
    """An older restricted add of four accounts, the big add (chunked at `limit`), a removal at the big add's very
    instant, a later removal of three, and a re-add of one of those with a new name."""
    return [
        *_add(ACCOUNTS[:4], T - 100, limit, name="old", hss=T - 100, joined=T - 105),
        *_add(ACCOUNTS, T, limit),
        *_remove(ACCOUNTS[4:5], T, limit),
        *_remove(ACCOUNTS[5:8], T + 10, limit),
        *_add(ACCOUNTS[6:7], T + 20, limit, name="later"),
    ]


def _delivery(publish: Publish, seq: int) -> Delivery:
    """How a consumer of publish's lane receives it: the local lane as is, a remote lane sourced onto the aggregate lane."""
    event_type = publish.subject.rsplit(".", 1)[1]
    if publish.subject.startswith("chat.inbox."):
        return Delivery(subject=publish.subject, data=publish.data, reply=f"r{seq}", stream=f"INBOX_{HOME}", stream_seq=seq, num_delivered=1)
    subject = f"chat.inbox.{REMOTE}.aggregate.{event_type}"
    return Delivery(subject=subject, data=publish.data, reply=f"r{seq}", stream=f"INBOX_{REMOTE}", stream_seq=seq, num_delivered=1, headers=SOURCED)


def _lane(publishes: list[Publish], dest: str) -> list[Publish]:
    return [p for p in publishes if p.msg_id.split(":")[-1].split("#")[0] == dest]


# --- search_sync (keyed by account)


def _search_views(batches: list[list[Publish]]) -> tuple[dict[str, Any], dict[str, Any]]:
    memory = MemoryViews()
    seq = 0
    for batch in batches:
        by_account: dict[str, list[MemberChange]] = {}
        for publish in batch:
            seq += 1
            parsed = search_parts.parse(_delivery(publish, seq))
            assert search_parts.is_parts(parsed), parsed
            for part in parsed:
                assert isinstance(part, MemberChange)
                by_account.setdefault(part.account, []).append(part)
        for account, changes in by_account.items():
            memory.apply(account, changes)
    user_rooms = {a: (d.rooms, d.restricted_rooms, d.room_timestamps) for a, d in memory.user_rooms.items()}
    return user_rooms, {i: (d.room_name, d.joined_at, d.room_type) for i, d in memory.spotlight.items()}


def _orders(draw: st.DrawFn, publishes: list[Publish]) -> list[list[Publish]]:
    """`publishes` with some twice, in any order, cut into batches."""
    arrivals = draw(st.permutations(publishes + draw(st.lists(st.sampled_from(publishes), max_size=8))))
    cuts = sorted(draw(st.sets(st.integers(1, len(arrivals) - 1), max_size=6)))
    return [arrivals[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrivals)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_search_chunks_in_any_order_with_duplicates_give_the_unchunked_views(data: st.DataObject) -> None:
    local = _lane(history(LIMIT), HOME)
    assert len(_lane(_add(ACCOUNTS, T, LIMIT), HOME)) == 3, "the big add is split on the local lane"
    expected = _search_views([[p] for p in _lane(history(None), HOME)])  # one event each, timestamp order
    assert _search_views(_orders(data.draw, local)) == expected


def test_search_shapes_follow_the_oldest_add_whatever_chunk_carries_it() -> None:
    user_rooms, spotlight = _search_views([list(reversed(_lane(history(LIMIT), HOME)))])
    assert user_rooms["u00"] == ([], {"r": T - 100}, {"r": T}), "the older restricted add shapes u00; the chunk only stamps"
    assert spotlight["u00_r"] == ("big", T - 105, "channel"), "its joinedAt; the newest add's name"
    assert user_rooms["u04"] == ([], {}, {"r": T}) and "u04_r" not in spotlight, "removed at the add's own instant"
    assert "u05_r" not in spotlight and spotlight["u06_r"] == ("later", T + 19, "channel")
    assert spotlight["u13_r"] == ("big", T - 1, "channel") and user_rooms["u13"] == (["r"], {}, {"r": T})


def test_search_dm_names_are_the_counterparts_even_at_a_limit_of_one() -> None:
    pair = [User(id="ia", account="alice", site_id=HOME), User(id="ic", account="carol", site_id=REMOTE)]
    dm = member_added_publishes(
        room=_room("", "dm", "d1"), members=pair, requester_account="alice", joined_at=T, history_shared_since=0, now_ms=T, dedup_base="dm", max_accounts=1
    )
    assert [p.msg_id for p in dm] == ["dm:s1", "dm:s2"], "not split"
    names = {}
    for seq, publish in enumerate(dm, start=1):
        parsed = search_parts.parse(_delivery(publish, seq))
        assert search_parts.is_parts(parsed)
        names |= {(publish.msg_id, p.account): p.room_name for p in parsed if isinstance(p, MemberChange)}
    assert names == {("dm:s1", "alice"): "carol", ("dm:s1", "carol"): "alice", ("dm:s2", "carol"): "alice"}


# --- inbox_mirror (keyed by room + account): the remote lane


def _mirror_state(publishes: list[Publish]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per membership that exists, the subscription its shaping add makes: the writer's rules (fold, `since`), in memory."""
    changes: list[mirror.Change] = []
    for seq, publish in enumerate(publishes, start=1):
        decoded = mirror.decode(_delivery(publish, seq))
        assert isinstance(decoded, list), decoded
        changes += decoded
    by_key: dict[tuple[str, str], list[mirror.Change]] = {}
    for change in changes:
        by_key.setdefault((change.room_id, change.account), []).append(change)
    state = {}
    for key, mine in by_key.items():
        final = mirror.fold(mirror.guard_for(c) for c in mine)
        if not mirror.should_exist(final):
            continue
        assert final.since is not None
        shaping = next(c for c in mine if c.kind is mirror.Kind.ADD and mirror.guard_for(c).version == final.since.version)
        sub = mirror.subscription_of(shaping, user_id=f"id-{key[1]}", sub_id="sub")
        state[key] = _fields(sub)
    assert set(state) == mirror.oracle(changes)
    return state


def _fields(sub: Any) -> dict[str, Any]:
    return {name: getattr(sub, name) for name in sub.__struct_fields__}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mirror_chunks_in_any_order_with_duplicates_give_the_unchunked_subscriptions(data: st.DataObject) -> None:
    remote = _lane(history(LIMIT), REMOTE)
    assert len(_lane(_add(ACCOUNTS, T, LIMIT), REMOTE)) == 2, "the big add is split on the remote lane"
    expected = _mirror_state(_lane(history(None), REMOTE))
    assert sorted(account for _, account in expected) == ["u01", "u03", "u09", "u11", "u13"]
    arrivals = [p for batch in _orders(data.draw, remote) for p in batch]
    assert _mirror_state(arrivals) == expected
