"""inbox_mirror's pure rules: decode outcomes, batch coalescing, the guard register and its order-independence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataflows.inbox_mirror import rules as mirror
from dataflows.inbox_mirror.rules import Change, Guard, GuardState, Kind
from schemas.carriers import AckHandle, Delivery
from schemas.envelope import OutboxEvent, encode_envelope
from schemas.events import (
    MemberAddEvent,
    MemberRemoveEvent,
    RoleSubscription,
    RoleUpdatedEvent,
    RoleUser,
    RoomRenamedEvent,
    encode_event,
)

SOURCED_FROM_S1 = {"Nats-Stream-Source": "OUTBOX_s1:7GOAUEZh 12 outbox.s1.to.s2.> chat.inbox.s2.aggregate.> outbox.s1.to.s2.x 6NXfE8fj"}


def delivery(data: bytes, seq: int = 1, headers: dict[str, str] | None = SOURCED_FROM_S1) -> Delivery:
    return Delivery(subject="chat.inbox.s2.aggregate.x", data=data, reply=f"r{seq}", stream="INBOX_s2", stream_seq=seq, num_delivered=1, headers=headers)


def envelope(event_type: str, payload: bytes, ts: int = 50, *, site: str = "s1", headers: dict[str, str] | None = SOURCED_FROM_S1) -> Delivery:
    data = encode_envelope(OutboxEvent(type=event_type, site_id=site, dest_site_id="s2", payload=payload, timestamp=ts))
    return delivery(data, headers=headers)


def change(kind: Kind, ts: int, account: str = "a", room: str = "r") -> Change:
    return Change(ack=AckHandle(reply=f"r{ts}", event_ms=ts), kind=kind, room_id=room, account=account, ts=ts)


REMOVE = encode_event(MemberRemoveEvent(type="member_left", room_id="r", accounts=["a", "b"], site_id="s1", org_id="org", timestamp=2))
ADD = encode_event(MemberAddEvent(type="member_added", room_id="r", room_name="n", accounts=["a", "b", "c"], site_id="s1", joined_at=1, timestamp=2))
ROLES = encode_event(RoleUpdatedEvent(user_id="u", subscription=RoleSubscription(room_id="r", u=RoleUser(account="a"), roles=["owner"]), action="role_updated", timestamp=3))
NO_ROLES = encode_event(RoleUpdatedEvent(user_id="u", subscription=RoleSubscription(room_id="r", u=RoleUser(account="a"), roles=[]), action="role_updated", timestamp=3))
RENAME = encode_event(RoomRenamedEvent(room_id="r", new_name="new", timestamp=4))


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (delivery(b"not json"), ("dead", "envelope")),
        (envelope("member_added", b"{}"), ("dead", "member_added")),
        (envelope("member_removed", b'{"type":"member_removed","roomId":"r","accounts":[""],"siteId":"s1","timestamp":1}'), ("dead", "member_removed")),
        (envelope("role_updated", NO_ROLES), ("dead", "empty roles")),
        (envelope("room_renamed", encode_event(RoomRenamedEvent(room_id="r", new_name="", timestamp=4))), ("dead", "empty newName")),
        (envelope("room_sync", b"{}"), ("ack", "unknown type 'room_sync'")),
        (envelope("member_removed", b'{"type":"member_removed","roomId":"r","accounts":[],"siteId":"s1","timestamp":1}'), ("ack", "")),
    ],
    ids=["bad-envelope", "bad-add-payload", "empty-account", "empty-roles", "empty-name", "unknown-type", "no-accounts"],
)
def test_decode_settles_at_once(item: Delivery, expected: tuple[str, str]) -> None:
    settle = mirror.decode(item)
    assert not isinstance(settle, list)
    assert settle.verdict.value == expected[0] and expected[1] in settle.reason
    assert settle.ignored == expected[1].startswith("unknown type")  # counted as ignored by the settle sink


def _add(room: str = "r", accounts: tuple[str, ...] = ("a",), site: str = "s1") -> bytes:
    return encode_event(MemberAddEvent(type="member_added", room_id=room, room_name="n", accounts=list(accounts), site_id=site, joined_at=1, timestamp=2))


def _roles(room: str, account: str) -> bytes:
    sub = RoleSubscription(room_id=room, u=RoleUser(account=account), roles=["owner"])
    return encode_event(RoleUpdatedEvent(user_id="u", subscription=sub, action="role_updated", timestamp=3))


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (envelope("member_added", ADD, headers=None), "origin unproven"),
        (envelope("member_added", ADD, headers={"Nats-Stream-Source": "ROOMS_s1 1 a b c"}), "origin unproven"),
        (envelope("member_added", ADD, site="s3"), "envelope claims siteId 's3' but was sourced from OUTBOX_s1"),
        (envelope("member_removed", REMOVE, site="s3"), "origin mismatch"),
        (envelope("member_added", _add(site="s3")), "announced room homed on 's3'"),
        (envelope("room_sync", b"{}", site="s3"), "origin mismatch"),
        (envelope("role_updated", ROLES, headers={}), "origin unproven"),
    ],
    ids=["no-header", "not-an-outbox", "claims-other-site", "remove-claims-other-site", "foreign-room", "unknown-type-foreign", "roles-no-header"],
)
def test_unproven_origin_is_poison(item: Delivery, reason: str) -> None:
    settle = mirror.decode(item)
    assert not isinstance(settle, list)
    assert settle.verdict.value == "dead" and reason in settle.reason


def test_replayed_dead_letter_keeps_its_proven_origin() -> None:
    replayed = {"Chatfed-Replayed-Stream-Source": SOURCED_FROM_S1["Nats-Stream-Source"]}
    assert [c.account for c in mirror.decode(envelope("member_added", _add(), headers=replayed)) if isinstance(c, Change)] == ["a"]


@pytest.mark.parametrize("bad", [".", "*", ">", " "], ids=["dot", "star", "gt", "space"])
@pytest.mark.parametrize(
    ("event_type", "make"),
    [
        ("member_added", lambda bad: _add(room=f"r{bad}x")),
        ("member_added", lambda bad: _add(accounts=("a", f"b{bad}x"))),
        ("member_removed", lambda bad: encode_event(MemberRemoveEvent(type="member_removed", room_id="r", accounts=[f"a{bad}"], site_id="s1", timestamp=2))),
        ("role_updated", lambda bad: _roles("r", f"a{bad}b")),
        ("room_renamed", lambda bad: encode_event(RoomRenamedEvent(room_id=f"{bad}r", new_name="n", timestamp=4))),
    ],
    ids=["add-room", "add-account", "remove-account", "roles-account", "rename-room"],
)
def test_invalid_identifiers_are_poison(event_type: str, make: object, bad: str) -> None:
    settle = mirror.decode(envelope(event_type, make(bad)))  # type: ignore[operator]
    assert not isinstance(settle, list)
    assert settle.verdict.value == "dead" and "invalid" in settle.reason


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("member_added", encode_event(MemberAddEvent(type="member_added", room_id="r", room_name="n\x00", accounts=["a"], site_id="s1", joined_at=1, timestamp=2))),
        ("room_renamed", encode_event(RoomRenamedEvent(room_id="r", new_name="x\x00y", timestamp=4))),
        ("role_updated", encode_event(RoleUpdatedEvent(user_id="u", subscription=RoleSubscription(room_id="r", u=RoleUser(account="a"), roles=["o\x00"]), action="role_updated", timestamp=3))),
    ],
    ids=["add-room-name", "rename", "roles"],
)
def test_nul_in_a_string_is_poison(event_type: str, payload: bytes) -> None:
    settle = mirror.decode(envelope(event_type, payload))
    assert not isinstance(settle, list)
    assert settle.verdict.value == "dead" and "NUL" in settle.reason


def test_bot_accounts_pass() -> None:
    assert [c.account for c in mirror.decode(envelope("member_added", _add(accounts=("helper.bot", "p_x")))) if isinstance(c, Change)] == ["helper.bot", "p_x"]


@pytest.mark.parametrize(
    ("payload", "event_type", "expected"),
    [
        (ADD, "member_added", [(Kind.ADD, "a"), (Kind.ADD, "b"), (Kind.ADD, "c")]),
        (REMOVE, "member_removed", [(Kind.REMOVE, "a"), (Kind.REMOVE, "b")]),
        (ROLES, "role_updated", [(Kind.ROLES, "a")]),
        (RENAME, "room_renamed", [(Kind.RENAME, "")]),
    ],
    ids=["add", "member-left-with-org", "roles", "rename"],
)
def test_decode_fans_out_one_part_per_account(payload: bytes, event_type: str, expected: list[tuple[Kind, str]]) -> None:
    changes = mirror.decode(envelope(event_type, payload, ts=77))
    assert [(c.kind, c.account) for c in changes if isinstance(c, Change)] == expected
    assert isinstance(changes, list) and len(changes) == len(expected)
    assert all(c.ack == AckHandle(reply="r1", event_ms=77) and c.ts == 77 and c.room_id == "r" for c in changes)


@pytest.mark.parametrize(
    ("a", "b", "later"),
    [((Kind.ADD, 5), (Kind.REMOVE, 5), 1), ((Kind.REMOVE, 4), (Kind.ADD, 5), 1), ((Kind.ADD, 6), (Kind.REMOVE, 5), 0), ((Kind.ADD, 5), (Kind.ADD, 5), None)],
    ids=["tie-remove-wins", "newer-add", "older-remove", "duplicate"],
)
def test_version_orders_by_time_then_remove(a: tuple[Kind, int], b: tuple[Kind, int], later: int | None) -> None:
    va, vb = mirror.version_of(*a), mirror.version_of(*b)
    assert (None if va == vb else (1 if vb > va else 0)) == later


GUARD_ADDED_5 = Guard(version=10, state=GuardState.ADDED, ts=5)
GUARD_REMOVED_5 = Guard(version=11, state=GuardState.REMOVED, ts=5)


def g(kind: Kind, ts: int) -> Guard:
    return mirror.guard_for(change(kind, ts))


@pytest.mark.parametrize(
    ("versions", "removed", "since"),
    [
        ([], None, None),
        ([(Kind.ADD, 5)], None, 5),
        ([(Kind.ADD, 6), (Kind.ADD, 5), (Kind.ADD, 9)], None, 5),
        ([(Kind.ADD, 5), (Kind.REMOVE, 5)], 5, None),
        ([(Kind.ADD, 2), (Kind.REMOVE, 4), (Kind.ADD, 9), (Kind.ADD, 6)], 4, 6),
        ([(Kind.ADD, 6), (Kind.REMOVE, 4), (Kind.REMOVE, 7), (Kind.ADD, 2)], 7, None),
        ([(Kind.ADD, 5), (Kind.ADD, 5)], None, 5),
    ],
    ids=["nothing", "one-add", "oldest-add-shapes", "remove-wins-tie", "oldest-add-after-last-remove", "removed-last", "duplicate"],
)
def test_fold_is_the_timestamp_order_result(versions: list[tuple[Kind, int]], removed: int | None, since: int | None) -> None:
    """The last remove, and the add that (re)inserted the subscription after it: the oldest one since."""
    for order in (versions, versions[::-1]):
        m = mirror.fold(g(kind, ts) for kind, ts in order)
        assert (m.removed and m.removed.ts, m.since and m.since.ts) == (removed, since)
        assert mirror.should_exist(m) == (since is not None)
        assert mirror.should_delete(m) == (since is None and removed is not None)


@pytest.mark.parametrize(
    ("batch", "stored", "fresh", "since"),
    [
        ([(Kind.ADD, 5)], [], [5], 5),
        ([(Kind.ADD, 5)], [(Kind.ADD, 5)], [], 5),
        ([(Kind.ADD, 4)], [(Kind.ADD, 5)], [4], 4),  # older add arriving late: kept, and it shapes
        ([(Kind.ADD, 6)], [(Kind.ADD, 5)], [6], 5),  # newer add: kept (a remove may still land between)
        ([(Kind.ADD, 3)], [(Kind.REMOVE, 4), (Kind.ADD, 5)], [], 5),  # before the last remove: dead
        ([(Kind.REMOVE, 6), (Kind.ADD, 7), (Kind.ADD, 2)], [(Kind.ADD, 5)], [6, 7], 7),
    ],
    ids=["first", "duplicate", "older-add", "newer-add", "stale-add", "remove-and-re-add"],
)
def test_needed_keeps_what_a_later_arrival_may_need(batch: list[tuple[Kind, int]], stored: list[tuple[Kind, int]], fresh: list[int], since: int) -> None:
    got, final = mirror.needed([change(kind, ts) for kind, ts in batch], [g(kind, ts) for kind, ts in stored])
    assert [c.ts for c in got] == fresh
    assert final.since is not None and final.since.ts == since


@pytest.mark.parametrize(
    ("shaped_by", "versions", "reshape"),
    [
        (None, [(Kind.ADD, 5), (Kind.ADD, 4)], False),
        (10, [(Kind.ADD, 5)], False),
        (12, [(Kind.ADD, 6), (Kind.ADD, 5)], True),
        (4, [(Kind.ADD, 2), (Kind.REMOVE, 3), (Kind.ADD, 5)], True),
        (4, [(Kind.ADD, 5)], False),
        (10, [(Kind.ADD, 5), (Kind.REMOVE, 6)], False),
    ],
    ids=["no-marker", "shaped-by-since", "older-add-arrived", "late-remove-between", "own-add-purged", "removed"],
)
def test_existing_subscription_takes_the_shape_of_since(shaped_by: int | None, versions: list[tuple[Kind, int]], reshape: bool) -> None:
    assert mirror.needs_reshape(shaped_by, mirror.fold(g(kind, ts) for kind, ts in versions)) == reshape


@pytest.mark.parametrize(
    ("ts", "guard", "stale"),
    [(6, GUARD_ADDED_5, False), (5, GUARD_ADDED_5, True), (4, GUARD_REMOVED_5, True), (6, GUARD_REMOVED_5, False), (1, None, False)],
    ids=["after-add", "same-ms-as-add", "before-remove", "after-remove", "no-register"],
)
def test_role_change_of_an_earlier_membership_is_stale(ts: int, guard: Guard | None, stale: bool) -> None:
    assert mirror.is_stale_roles(change(Kind.ROLES, ts), guard) == stale


def test_plan_keeps_every_membership_version_and_the_newest_roles_and_name() -> None:
    changes = [change(Kind.ADD, 5), change(Kind.REMOVE, 5), change(Kind.ADD, 4), change(Kind.ADD, 5), change(Kind.ADD, 9, "b"), change(Kind.ROLES, 3)]
    changes += [change(Kind.ROLES, 8)]
    changes += [Change(ack=AckHandle(reply=f"r{t}"), kind=Kind.RENAME, room_id="r", ts=t, name=f"n{t}") for t in (7, 2)]
    plan = mirror.plan(changes)
    assert {k: sorted(v) for k, v in plan.membership.items()} == {("r", "a"): [8, 10, 11], ("r", "b"): [18]}
    assert plan.roles[("r", "a")].ts == 8
    assert plan.renames["r"].name == "n7"


history = st.lists(st.tuples(st.sampled_from([Kind.ADD, Kind.REMOVE]), st.integers(1, 6), st.sampled_from("abc")), max_size=25)


def shapes_in_timestamp_order(changes: list[Change]) -> dict[tuple[str, str], int]:
    """The oracle: apply in version order; an add inserts (its ts is the shape) only when absent, a remove deletes."""
    present: dict[tuple[str, str], int] = {}
    for c in sorted(changes, key=lambda c: mirror.version_of(c.kind, c.ts)):
        key = (c.room_id, c.account)
        if c.kind is Kind.REMOVE:
            present.pop(key, None)
        else:
            present.setdefault(key, c.ts)
    return present


@given(history, st.randoms(use_true_random=False), st.integers(1, 5))
def test_register_is_order_independent(events: list[tuple[Kind, int, str]], rnd: random.Random, chunk: int) -> None:
    """Storing the needed versions batch by batch, in any order and with duplicates, folds to the timestamp-order shapes."""
    changes = [change(kind, ts, account) for kind, ts, account in events]
    shuffled = changes + rnd.sample(changes, k=len(changes) // 2)
    rnd.shuffle(shuffled)
    registers: dict[tuple[str, str], dict[int, Guard]] = {}
    shaped: dict[tuple[str, str], int] = {}  # the subscription: the add version whose shape it carries
    for start in range(0, len(shuffled), chunk):
        for key, batch in mirror.plan(shuffled[start : start + chunk]).membership.items():
            stored = registers.setdefault(key, {})
            fresh, final = mirror.needed(batch.values(), stored.values())
            stored.update({mirror.version_of(c.kind, c.ts): mirror.guard_for(c) for c in fresh})
            for v in [v for v in stored if v < final.floor]:  # superseded versions are deleted
                del stored[v]
            if final.since is None:
                shaped.pop(key, None)
            elif key not in shaped or mirror.needs_reshape(shaped[key], final):
                shaped[key] = final.since.version
    assert {k: v // 2 for k, v in shaped.items()} == shapes_in_timestamp_order(changes)
    assert set(shaped) == mirror.oracle(changes)
