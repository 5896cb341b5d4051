"""SubscriptionWriter driven directly against the real FerretDB, each result compared with what `rules` folding says.

The cases here otherwise only show up as an oracle mismatch thousands of events later (issue 11, item 3). Changes are
built the way the flow builds them: an envelope sourced from the origin's OUTBOX, through `rules.decode`.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from connectors.mongo import Document, ensure_indexes
from connectors.operators import PartOutcome
from dataflows.inbox_mirror import rules as mirror
from dataflows.inbox_mirror.rules import Change, Kind, MemberKey
from dataflows.inbox_mirror.writer import (
    GUARDS,
    REGISTER_HORIZON_MS,
    ROOM_NAMES,
    SHAPED_BY,
    SubscriptionWriter,
    WriteRejected,
    purge_registers,
    run_updates,
)
from schemas import names, subjects
from schemas.carriers import Delivery
from schemas.documents import to_mongo
from schemas.events import MemberAddEvent, MemberRemoveEvent, RoomType
from schemas.origin import STREAM_SOURCE
from testkit.clients import mongo_client
from testkit.mirror_site import BASE_MS, Item, add, remove, rename, roles
from testkit.support import envelope_bytes, unique_site

T = BASE_MS
ORIGIN, SITE = "s1", "s2"
USERS = ["a", "b", "c", "d"]
READ_STATE = "alert"  # set by the tests as a local user would; the writer must never touch it
_seq = itertools.count(1)
Results = list[tuple[Change, PartOutcome]]


class Crash(Exception):
    """Injected between two steps of a batch: the process dies, the batch is redelivered."""


@pytest.fixture
def db(servers: dict[str, Any]) -> Iterator[Database[Document]]:
    client = mongo_client(servers, serverSelectionTimeoutMS=10_000)
    database = client[names.mongo_database(unique_site('w'))]
    try:
        ensure_indexes(database)
        database.users.insert_many([{"_id": f"u-{a}", "account": a, "siteId": SITE} for a in USERS])
        yield database
    finally:
        client.drop_database(database.name)
        client.close()


def changes(*items: Item) -> list[Change]:
    """Each event delivered once, decoded by the flow's own rule."""
    out: list[Change] = []
    for event_type, event, ts in items:
        if isinstance(event, (MemberAddEvent, MemberRemoveEvent)):
            event = msgspec.structs.replace(event, site_id=ORIGIN)  # a site only announces its own rooms
        seq = next(_seq)
        delivery = Delivery(
            subject=subjects.inbox_aggregate(SITE, event_type), data=envelope_bytes(event, event_type=event_type, site=ORIGIN, dest=SITE, timestamp=ts),
            reply=f"$JS.ACK.{seq}", stream=names.inbox_stream(SITE), stream_seq=seq, num_delivered=1, headers={STREAM_SOURCE: f"OUTBOX_{ORIGIN} {seq}"},
        )
        decoded = mirror.decode(delivery)
        assert isinstance(decoded, list) and all(mirror.is_change(c) for c in decoded), decoded
        out += [c for c in decoded if mirror.is_change(c)]
    return out


def write(writer: SubscriptionWriter, batch: list[Change]) -> Results:
    """One writer call with the batch keyed by room, as `coalesce` hands it over; each change with its outcome."""
    by_room: dict[str, list[Change]] = {}
    for c in batch:
        by_room.setdefault(mirror.room_key(c), []).append(c)
    ordered = [c for group in by_room.values() for c in group]
    outcomes = writer.write([(room, list[object](group)) for room, group in by_room.items()])
    assert len(outcomes) == len(ordered)
    return list(zip(ordered, outcomes, strict=True))


def apply(writer: SubscriptionWriter, *items: Item) -> list[Change]:
    """Write `items` as one batch that must succeed entirely."""
    results = write(writer, changes(*items))
    assert [o.reason for _, o in results if not o.ok] == []
    return [c for c, _ in results]


def expected(applied: list[Change]) -> tuple[dict[MemberKey, Document], dict[MemberKey, set[int]], dict[str, Document]]:
    """Subscriptions (without `_id`), register versions and room names that folding every applied change says."""
    membership: dict[MemberKey, list[Change]] = {}
    for c in applied:
        if c.kind in (Kind.ADD, Kind.REMOVE):
            membership.setdefault((c.room_id, c.account), []).append(c)
    renames = {c.room_id: c for c in sorted((c for c in applied if c.kind is Kind.RENAME), key=lambda c: c.ts)}
    subs: dict[MemberKey, Document] = {}
    versions: dict[MemberKey, set[int]] = {}
    for key, cs in membership.items():
        final = mirror.fold(mirror.guard_for(c) for c in cs)
        versions[key] = {v for c in cs if (v := mirror.guard_for(c).version) >= final.floor}
        if final.since is None:
            continue
        shaper = next(c for c in cs if mirror.guard_for(c) == final.since)
        doc = {k: v for k, v in to_mongo(mirror.subscription_of(shaper, user_id=f"u-{key[1]}", sub_id="")).items() if k != "_id"}
        doc[SHAPED_BY] = final.since.version
        newer_roles = [c for c in applied if c.kind is Kind.ROLES and (c.room_id, c.account) == key and c.ts > final.since.ts]
        if newer_roles:
            newest = max(newer_roles, key=lambda c: c.ts)
            doc.update(roles=newest.roles, rolesUpdatedAt=newest.ts)
        named = renames.get(key[0])
        if named is not None and doc["roomType"] == RoomType.CHANNEL.value and doc["joinedAt"] < named.ts:
            doc.update(name=named.name, nameUpdatedAt=named.ts)
        subs[key] = doc
    names = {room: {"_id": room, "version": c.ts, "ts": c.ts, "name": c.name} for room, c in renames.items()}
    return subs, versions, names


def observed(db: Database[Document]) -> tuple[dict[MemberKey, Document], dict[MemberKey, set[int]], dict[str, Document]]:
    subs = {(d["roomId"], d["u"]["account"]): {k: v for k, v in d.items() if k not in ("_id", READ_STATE)} for d in db.subscriptions.find()}
    versions: dict[MemberKey, set[int]] = {}
    for g in db[GUARDS].find():
        versions.setdefault((g["roomId"], g["account"]), set()).add(g["version"])
    return subs, versions, {d["_id"]: d for d in db[ROOM_NAMES].find()}


def snapshot(db: Database[Document]) -> dict[str, list[Document]]:
    """Every document the writer owns, ids included."""
    return {name: sorted(db[name].find(), key=lambda d: str(d["_id"])) for name in ("subscriptions", GUARDS, ROOM_NAMES)}


def test_add_creates_subscription_and_register_unknown_account_fails_alone(db: Database[Document]) -> None:
    writer = SubscriptionWriter(db)
    results = write(writer, changes(add("r1", ["a", "ghost"], T, name="one"), add("dm1", ["b"], T, name="", room_type="dm", requester="z")))
    assert [(c.account, o.ok, o.reason) for c, o in results] == [("a", True, ""), ("ghost", False, mirror.unknown_account_reason("ghost")), ("b", True, "")]
    assert observed(db) == expected([c for c, o in results if o.ok])
    sub = db.subscriptions.find_one({"roomId": "r1"})
    (register,) = db[GUARDS].find({"key": mirror.guard_id("r1", "a")})
    assert sub is not None and len(sub["_id"]) == 32
    assert (register["state"], register["ts"], register["sub"]) == ("added", T, {k: v for k, v in sub.items() if k != SHAPED_BY})


def test_duplicate_add_is_a_no_op_success(db: Database[Document]) -> None:
    writer = SubscriptionWriter(db)
    apply(writer, add("r1", ["a", "b"], T))
    db.subscriptions.update_many({}, {"$set": {READ_STATE: True}})
    before = snapshot(db)
    apply(writer, add("r1", ["a", "b"], T))  # a second delivery of the same event
    assert snapshot(db) == before


def test_remove_deletes_and_keeps_only_the_remove_version(db: Database[Document]) -> None:
    writer = SubscriptionWriter(db)
    applied = apply(writer, add("r1", ["a", "b"], T)) + apply(writer, remove("r1", ["a"], T + 10))
    assert observed(db) == expected(applied)
    assert set(observed(db)[0]) == {("r1", "b")} and observed(db)[1][("r1", "a")] == {mirror.version_of(Kind.REMOVE, T + 10)}


@pytest.mark.parametrize("together", [False, True], ids=["later-batch", "same-batch"])
def test_stale_add_after_a_remove_does_not_resurrect(db: Database[Document], together: bool) -> None:
    writer = SubscriptionWriter(db)
    applied = apply(writer, add("r1", ["a"], T))
    if together:
        applied += apply(writer, remove("r1", ["a"], T + 10), add("r1", ["a"], T + 5))
    else:
        applied += apply(writer, remove("r1", ["a"], T + 10)) + apply(writer, add("r1", ["a"], T + 5))
    assert observed(db) == expected(applied)
    assert observed(db)[0] == {}


def test_late_older_add_reshapes_in_place(db: Database[Document]) -> None:
    """The oldest add since the last remove shapes the subscription; `_id` and read state stay."""
    writer = SubscriptionWriter(db)
    applied = apply(writer, add("r1", ["a"], T + 2, name="later", hss=T + 2))
    (before,) = db.subscriptions.find()
    db.subscriptions.update_one({}, {"$set": {READ_STATE: True}})
    applied += apply(writer, add("r1", ["a"], T, name="first"))
    (after,) = db.subscriptions.find()
    assert observed(db) == expected(applied)
    assert (after["_id"], after[READ_STATE], after["name"], after[SHAPED_BY], "historySharedSince" in after) == (before["_id"], True, "first", 2 * T, False)


def test_late_remove_between_two_adds_reshapes_from_the_newer_add(db: Database[Document]) -> None:
    """The role change belongs to the membership the late remove ended: the newer add's roles replace it."""
    writer = SubscriptionWriter(db)
    applied = apply(writer, add("r1", ["a"], T, name="first"), add("r1", ["a"], T + 4, name="second", hss=T + 4))
    applied += apply(writer, roles("r1", "a", ["owner"], T + 1))
    applied += apply(writer, remove("r1", ["a"], T + 2))
    assert observed(db) == expected(applied)
    (sub,) = db.subscriptions.find()
    assert (sub["name"], sub["roles"], sub[SHAPED_BY], "rolesUpdatedAt" in sub) == ("second", ["member"], 2 * (T + 4), False)


def test_role_change_waits_for_its_add_and_stale_ones_are_skipped(db: Database[Document]) -> None:
    writer = SubscriptionWriter(db)
    (early,) = write(writer, changes(roles("r1", "a", ["owner"], T + 5)))
    assert (early[1].ok, early[1].reason) == (False, "subscription of 'a' in 'r1' not found")
    applied = apply(writer, add("r1", ["a"], T + 3)) + apply(writer, roles("r1", "a", ["owner"], T + 5), roles("r1", "a", ["x"], T + 1))
    applied += apply(writer, roles("r1", "a", ["older"], T + 4))  # older than the one applied: loses
    assert observed(db) == expected(applied)
    assert observed(db)[0][("r1", "a")]["roles"] == ["owner"]


def test_rename_updates_channel_names_joined_before_it(db: Database[Document]) -> None:
    writer = SubscriptionWriter(db)
    applied = apply(writer, add("r1", ["a"], T, name="old"), add("dm1", ["b"], T, name="", room_type="dm", requester="z"))
    applied += apply(writer, rename("r1", "new", T + 5), rename("dm1", "not-a-channel", T + 5), add("r1", ["c"], T + 9, name="newer"))
    applied += apply(writer, rename("r1", "older", T + 3))  # older than the register: loses
    applied += apply(writer, add("r1", ["d"], T + 1, name="old"))  # late add from before the rename: renamed from the register
    assert observed(db) == expected(applied)
    names = {key: (d["name"], d.get("nameUpdatedAt")) for key, d in observed(db)[0].items()}
    assert names == {("r1", "a"): ("new", T + 5), ("r1", "c"): ("newer", None), ("r1", "d"): ("new", T + 5), ("dm1", "b"): ("z", None)}


HISTORY = [
    add("r1", ["a", "b", "c"], T, name="one"),
    add("r1", ["a"], T + 3, name="one-later"),  # same membership: T shapes
    remove("r1", ["b"], T + 2),
    add("r1", ["b"], T + 1, name="stale"),  # older than b's remove
    roles("r1", "a", ["owner"], T + 4),
    rename("r1", "renamed", T + 5),
    add("r2", ["c", "d"], T + 2, name="two"),
    remove("r2", ["d"], T + 6),
    roles("r2", "c", ["owner"], T + 1),  # older than c's add: stale, skipped
    add("dm1", ["a"], T, name="", room_type="dm", requester="z"),
]


@pytest.mark.parametrize("crash", ["half", "_conform", "_apply_roles", "_apply_names"])
def test_replaying_a_batch_after_a_crash_ends_in_the_same_documents(db: Database[Document], monkeypatch: pytest.MonkeyPatch, crash: str) -> None:
    """`half`: the first half of the batch was written before the crash; otherwise the crash hits before that step."""
    full = changes(*HISTORY)
    crashing = SubscriptionWriter(db)
    if crash == "half":
        write(crashing, full[: len(full) // 2])  # some may fail (a role before its add): redelivered anyway
    else:

        def boom(*_: Any) -> None:
            raise Crash(crash)

        monkeypatch.setattr(crashing, crash, boom)
        with pytest.raises(Crash):
            write(crashing, full)
    writer = SubscriptionWriter(db)  # the restarted process, the whole batch redelivered
    assert [o.reason for _, o in write(writer, full) if not o.ok] == []
    assert observed(db) == expected(full)
    done = snapshot(db)
    assert [o.reason for _, o in write(writer, changes(*HISTORY)) if not o.ok] == []  # and once more: nothing moves
    assert snapshot(db) == done


def test_purge_registers_drops_only_registers_past_the_horizon(db: Database[Document]) -> None:
    now = int(time.time() * 1000)
    old = now - REGISTER_HORIZON_MS - 60_000
    applied = apply(SubscriptionWriter(db), add("r-old", ["a"], old), rename("r-old", "x", old + 1), add("r-new", ["a"], now - 2), rename("r-new", "y", now - 1))
    SubscriptionWriter.start(db)  # purges with the clock at every start of the flow
    subs, versions, names = observed(db)
    assert (set(subs), set(versions), set(names)) == ({("r-old", "a"), ("r-new", "a")}, {("r-new", "a")}, {"r-new"})
    assert subs == expected(applied)[0]  # the subscriptions themselves stay
    assert purge_registers(db, now + REGISTER_HORIZON_MS) == 2  # cutoff `now`: the young ones go too
    assert observed(db)[1:] == ({}, {})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_gives_not_ok_outcomes_and_raises_nothing() -> None:
    client: MongoClient[Document] = MongoClient(f"mongodb://127.0.0.1:{_closed_port()}/", serverSelectionTimeoutMS=300, connectTimeoutMS=300)
    try:
        writer = SubscriptionWriter(client[names.mongo_database("nowhere")])
        for batch in (changes(*HISTORY), changes(remove("r1", ["a"], T), rename("r1", "n", T))):  # the first query differs
            results = write(writer, batch)
            assert all(not o.ok and o.reason.startswith("mongo: ") for _, o in results), [o.reason for _, o in results]
    finally:
        client.close()


def test_a_refused_update_statement_raises_write_rejected(db: Database[Document]) -> None:
    """FerretDB reports a refused statement inside an `ok: 1` reply; it must stop the flow, never pass as written."""
    db.probe.insert_one({"_id": "x", "a": 1})
    with pytest.raises(WriteRejected, match="Cannot create field 'b'"):
        run_updates(db.probe, [{"q": {"_id": "x"}, "u": {"$set": {"a.b": 1}}}])
