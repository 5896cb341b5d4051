"""inbox_mirror's MongoDB writer: guard registers, then subscriptions made to conform to them, one bulk per batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import msgspec
import uuid_utils
from pymongo.collection import Collection
from pymongo.database import Database

from connectors import metrics
from connectors.mongo import (
    TRANSIENT_ERRORS,
    Document,
    delete_in,
    ensure_indexes,
    find_in,
    in_chunks,
    insert_missing,
    pushes_in_down,
)
from connectors.operators import PartOutcome
from dataflows.inbox_mirror import rules as mirror
from dataflows.inbox_mirror.rules import Change, Guard, MemberKey
from schemas import names
from schemas.documents import to_mongo
from schemas.events import RoomType
from schemas.streams import DLQ_MAX_AGE_S, INBOX_MAX_AGE_S, OUTBOX_MAX_AGE_S

log = logging.getLogger(__name__)

FLOW: Final = names.INBOX_MIRROR_FLOW
GUARDS: Final = "membership_guards"
ROOM_NAMES: Final = "room_names"
CHUNK: Final = 1_000
# No event older than this can still be delivered (OUTBOX wait + INBOX retention + DLQ replay):
# a register older than it guards nothing any more (docs/inbox_mirror.md, "Cleanup").
REGISTER_HORIZON_MS: Final = (OUTBOX_MAX_AGE_S + INBOX_MAX_AGE_S + DLQ_MAX_AGE_S) * 1000
# on each mirrored subscription: the guard version of the add whose event shaped it (docs/inbox_mirror.md)
SHAPED_BY: Final = "shapedBy"
RESHAPE_CHUNK: Final = 25
SHAPE_FIELDS: Final = ("name", "roomType", "joinedAt", "historySharedSince", "roles", "isSubscribed", "siteId")
Folded: TypeAlias = tuple[mirror.Membership, Document | None]


class WriteRejected(RuntimeError):
    """The server refused an update statement (a `writeErrors` entry in an `ok: 1` reply): our bug, so the flow stops.

    No well-formed batch leads here (every `$set` is a top-level field, none touches a unique key); without the check
    a refused statement would pass silently and its message would be acked.
    """


def new_id() -> str:
    """A subscription id: uuid7, 32 lowercase hex."""
    return uuid_utils.uuid7().hex


def purge_registers(db: Database[Document], now_ms: int) -> int:
    """Delete guard and room-name registers past the horizon (FerretDB has no TTL index); returns how many."""
    cutoff = now_ms - REGISTER_HORIZON_MS
    return sum(db[name].delete_many({"ts": {"$lt": cutoff}}).deleted_count for name in (GUARDS, ROOM_NAMES))


LEGACY_SEPARATOR: Final = "\x00"  # between room and account in guard keys written before the space (issue 12)
MIGRATIONS: Final = "migrations"  # one document per one-off data change carried out on this store
GUARD_KEYS_MIGRATION: Final = "membership_guards.key-space-separator"


def rekey_legacy_guards(db: Database[Document]) -> int:
    """Give guards written with the old NUL separator the current key (`rules.guard_id`), once; returns how many.

    Only stores that could hold a NUL have them (FerretDB on SQLite, MongoDB; PostgreSQL's jsonb never could). Insert
    the re-keyed copy, then delete the original, then mark the store done (`MIGRATIONS`): stopped half way, the next
    start finishes it (a copy already there is a duplicate key, ignored). Without this a register written before the
    upgrade would not be found, and an event older than it, redelivered after the upgrade, would be applied.
    """
    guards = db[GUARDS]
    if pushes_in_down(guards) or db[MIGRATIONS].find_one({"_id": GUARD_KEYS_MIGRATION}) is not None:
        return 0  # FerretDB on PostgreSQL (a regex would read every guard, and none can match), or done before
    legacy = list(guards.find({"key": {"$regex": "\\x00"}}))  # the escape, not the byte: MongoDB refuses a NUL in a pattern
    if legacy:
        insert_missing(guards, [_rekeyed(doc) for doc in legacy])
        delete_in(guards, "_id", [doc["_id"] for doc in legacy])
    insert_missing(db[MIGRATIONS], [{"_id": GUARD_KEYS_MIGRATION, "rekeyed": len(legacy)}])
    return len(legacy)


def _rekeyed(doc: Document) -> Document:
    return {**doc, "_id": doc["_id"].replace(LEGACY_SEPARATOR, " "), "key": mirror.guard_id(doc["roomId"], doc["account"])}


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


class SubscriptionWriter:
    """Applies coalesced batches of `Change`s; every step is idempotent, so a replay after a crash is harmless."""

    def __init__(self, db: Database[Document]) -> None:
        self._db = db

    @classmethod
    def start(cls, db: Database[Document]) -> SubscriptionWriter:
        """Create the indexes, purge expired registers and re-key those of an older version, then return a writer."""
        ensure_indexes(db)
        purged = purge_registers(db, int(time.time() * 1000))
        rekeyed = rekey_legacy_guards(db)
        log.info("inbox_mirror: indexes ready, %d expired registers purged, %d older guards re-keyed", purged, rekeyed)
        return cls(db)

    def write(self, batch: list[tuple[str, list[object]]]) -> list[PartOutcome]:
        """One outcome per part of `batch` (coalesced lists keyed by room); transient failures are outcomes.

        Raises `WriteRejected` (and any other non-transient error): retrying cannot help, the flow stops.
        """
        changes = [item for _, items in batch for item in items if isinstance(item, Change)]
        started = time.perf_counter()
        try:
            failures = self._apply(changes)
        except TRANSIENT_ERRORS as exc:
            log.warning("inbox_mirror: MongoDB unavailable for %d changes: %s", len(changes), exc)
            return [PartOutcome(ack=c.ack, ok=False, reason=f"mongo: {exc}") for c in changes]
        metrics.observe_write(FLOW, "mongo", len(changes), time.perf_counter() - started)
        return [
            PartOutcome(ack=c.ack, ok=_failure(c, failures) is None, reason=_failure(c, failures) or "")
            for c in changes
        ]

    def _apply(self, changes: list[Change]) -> dict[tuple[mirror.Kind, MemberKey], str]:
        failures: dict[tuple[mirror.Kind, MemberKey], str] = {}
        users = self._user_ids({c.account for c in changes if c.kind is mirror.Kind.ADD})
        for c in changes:
            if c.kind is mirror.Kind.ADD and c.account not in users:
                failures[(c.kind, (c.room_id, c.account))] = mirror.unknown_account_reason(c.account)
        # an add that cannot be shaped takes no part: the member's other changes still apply
        plan = mirror.plan(c for c in changes if (c.kind, (c.room_id, c.account)) not in failures)
        docs = self._read_guards(sorted({*plan.membership, *plan.roles}))
        versions: list[Document] = []
        for key, batch in plan.membership.items():
            fresh, _ = mirror.needed(batch.values(), [_guard(d) for d in docs.get(key, {}).values()])
            for c in fresh:
                sub = to_mongo(mirror.subscription_of(c, user_id=users[c.account], sub_id=new_id())) if c.kind is mirror.Kind.ADD else None
                versions.append(_guard_doc(key, mirror.guard_for(c), sub))
        insert_missing(self._db[GUARDS], versions)  # a duplicate is the same version, written by an earlier delivery
        stored = {key: dict(by_version) for key, by_version in docs.items()}
        for doc in versions:
            stored.setdefault((doc["roomId"], doc["account"]), {}).setdefault(doc["version"], doc)
        finals = {key: _folded(by_version) for key, by_version in stored.items()}
        touched = {key: finals[key] for key in plan.membership if key in finals}
        shaped = self._conform(touched)
        # a racing worker may have moved a register between our read and our writes: conform to the re-read value
        again = {key: _folded(by_version) for key, by_version in self._read_guards(sorted(touched)).items()}
        shaped |= self._conform({k: f for k, f in again.items() if f[0] != touched[k][0]})
        # versions older than the last remove can never matter again
        self._delete_ids(self._db[GUARDS], [d["_id"] for key, by_version in docs.items() for v, d in by_version.items() if v < finals[key][0].floor])
        self._apply_roles(plan.roles, {k: g for k, (m, _) in finals.items() if (g := m.last) is not None}, failures)
        renames = {room: {"version": c.ts, "ts": c.ts, "name": c.name} for room, c in plan.renames.items()}
        # a new or re-shaped channel subscription may carry a name older than a rename already applied to its room
        self._apply_names(self._advance(self._db[ROOM_NAMES], renames, shaped))
        return failures

    def _read_guards(self, keys: Sequence[MemberKey]) -> dict[MemberKey, dict[int, Document]]:
        """Every stored version of each register, by version."""
        found: dict[MemberKey, dict[int, Document]] = {}
        if keys:
            for doc in find_in(self._db[GUARDS], "key", [mirror.guard_id(*key) for key in keys]):
                found.setdefault((doc["roomId"], doc["account"]), {})[doc["version"]] = doc
        return found

    def _conform(self, finals: Mapping[MemberKey, Folded]) -> set[str]:
        """Make each subscription match its register (absent when removed; present, shaped by `since`, when added).

        Returns the rooms whose channel subscriptions were inserted or re-shaped (their name must be re-checked).
        """
        gone = [key for key, (m, _) in finals.items() if mirror.should_delete(m)]
        if gone:
            wanted = set(gone)
            self._delete_ids(self._db.subscriptions, [d["_id"] for d in self._find_subs(gone, {"roomId": 1, "u.account": 1}) if _sub_key(d) in wanted])
        subs = {key: {**doc["sub"], SHAPED_BY: doc["version"]} for key, (m, doc) in finals.items() if mirror.should_exist(m) and doc and doc.get("sub")}
        existed = insert_missing(self._db.subscriptions, list(subs.values()))
        changed = [sub for sub in subs.values() if sub["_id"] not in existed]
        if existed:  # insert-only lost to an existing subscription: it keeps its `_id` and read state, maybe not its shape
            changed += self._reshape({key: sub for key, sub in subs.items() if sub["_id"] in existed}, finals)
        return {sub["roomId"] for sub in changed if sub["roomType"] == RoomType.CHANNEL.value}

    def _reshape(self, wanted: Mapping[MemberKey, Document], finals: Mapping[MemberKey, Folded]) -> list[Document]:
        """Give existing subscriptions the shape of their membership's oldest add (SYSTEM.md §4); returns the shapes applied."""
        # one statement per distinct change (a room's members re-shaped by one add share it): FerretDB/SQLite scans per statement
        groups: dict[str, tuple[Document, list[str]]] = {}
        applied: list[Document] = []
        for doc in self._find_subs(list(wanted), {"_id": 1, "roomId": 1, "u.account": 1, SHAPED_BY: 1, "rolesUpdatedAt": 1}):
            key = _sub_key(doc)
            since = finals[key][0].since if key in wanted else None
            if since is None or not mirror.needs_reshape(doc.get(SHAPED_BY), finals[key][0]):
                continue
            change = _reshape_change(doc, wanted[key], since.ts)
            groups.setdefault(repr(change), (change, []))[1].append(doc["_id"])
            applied.append(wanted[key])
        statements = [
            {"q": {"_id": {"$in": chunk}, SHAPED_BY: change["shapedBy"]}, "u": change["u"], "multi": True}
            for change, ids in groups.values()
            for chunk in in_chunks(self._db.subscriptions, ids)
        ]
        for start in range(0, len(statements), RESHAPE_CHUNK):  # a command per few statements: each stays well under the socket timeout
            run_updates(self._db.subscriptions, statements[start : start + RESHAPE_CHUNK])
        return applied

    def _find_subs(self, keys: Sequence[MemberKey], projection: Document) -> list[Document]:
        rooms, accounts = sorted({r for r, _ in keys}), sorted({a for _, a in keys})
        return find_in(self._db.subscriptions, "roomId", rooms, also={"u.account": {"$in": accounts}}, projection=projection)

    def _apply_roles(self, roles: Mapping[MemberKey, Change], finals: Mapping[MemberKey, Guard], failures: dict[tuple[mirror.Kind, MemberKey], str]) -> None:
        pending = {key: c for key, c in roles.items() if not mirror.is_stale_roles(c, finals.get(key))}
        if not pending:
            return
        rooms = sorted({room for room, _ in pending})
        accounts = sorted({account for _, account in pending})
        found = find_in(self._db.subscriptions, "roomId", rooms, also={"u.account": {"$in": accounts}}, projection={"roomId": 1, "u.account": 1})
        ids = {(d["roomId"], d["u"]["account"]): d["_id"] for d in found}
        updates: list[Document] = []
        for (room, account), c in pending.items():
            if (room, account) not in ids:  # its member_added has not landed yet: retry with backoff
                failures[(mirror.Kind.ROLES, (room, account))] = f"subscription of {account!r} in {room!r} not found"
                continue
            newer = {"$or": [{"rolesUpdatedAt": {"$exists": False}}, {"rolesUpdatedAt": {"$lt": c.ts}}]}
            updates.append({"q": {"_id": ids[(room, account)], **newer}, "u": {"$set": {"roles": c.roles, "rolesUpdatedAt": c.ts}}})
        run_updates(self._db.subscriptions, updates)

    def _apply_names(self, registers: Mapping[str, Document]) -> None:
        # joinedAt < ts: a member who joined after the rename got the new name from its own event
        updates = [
            {
                "q": {
                    "roomId": room,
                    "roomType": RoomType.CHANNEL.value,
                    "joinedAt": {"$lt": reg["ts"]},
                    "$or": [{"nameUpdatedAt": {"$exists": False}}, {"nameUpdatedAt": {"$lt": reg["ts"]}}],
                },
                "u": {"$set": {"name": reg["name"], "nameUpdatedAt": reg["ts"]}},
                "multi": True,
            }
            for room, reg in registers.items()
        ]
        run_updates(self._db.subscriptions, updates)

    def _advance(self, coll: Collection[Document], wanted: Mapping[str, Document], also_read: Iterable[str]) -> dict[str, Document]:
        """Raise each register to `wanted[id]` where that has a higher `version`; return the final registers."""
        ids = sorted({*wanted, *also_read})
        if not ids:
            return {}
        existing = {d["_id"]: d["version"] for d in find_in(coll, "_id", wanted, projection={"version": 1})}
        fresh = [{"_id": i, **doc} for i, doc in wanted.items() if i not in existing]
        collided = insert_missing(coll, fresh)  # inserted meanwhile by a racing worker: compare-and-set below
        raise_ids = [i for i, doc in wanted.items() if (i in existing and existing[i] < doc["version"]) or i in collided]
        # conditional, never an upsert: FerretDB stops an unordered update batch at its first duplicate key
        run_updates(coll, [{"q": {"_id": i, "version": {"$lt": wanted[i]["version"]}}, "u": {"$set": wanted[i]}} for i in raise_ids])
        return {d["_id"]: d for d in find_in(coll, "_id", ids)}

    def _user_ids(self, accounts: set[str]) -> dict[str, str]:
        if not accounts:
            return {}
        return {d["account"]: str(d["_id"]) for d in find_in(self._db.users, "account", accounts, projection={"account": 1})}

    def _delete_ids(self, coll: Collection[Document], ids: Sequence[str]) -> None:
        delete_in(coll, "_id", ids)  # a statement per chunk of ids: FerretDB on SQLite pays a full scan per statement


def _guard_doc(key: MemberKey, guard: Guard, sub: Document | None) -> Document:
    """One version of a register; an add carries the subscription it stands for, so anyone can re-insert it."""
    gid = mirror.guard_id(*key)
    doc: Document = {"_id": f"{gid} {guard.version}", "key": gid, "roomId": key[0], "account": key[1]}
    doc.update(version=guard.version, state=guard.state.value, ts=guard.ts)
    if sub is not None:
        doc["sub"] = sub
    return doc


def _guard(doc: Document) -> Guard:
    return msgspec.convert(doc, Guard)


def _folded(by_version: Mapping[int, Document]) -> Folded:
    """A register's versions folded, with the stored version of the add that shapes the subscription."""
    final = mirror.fold(_guard(d) for d in by_version.values())
    return final, None if final.since is None else by_version[final.since.version]


def _sub_key(doc: Document) -> MemberKey:
    return doc["roomId"], doc["u"]["account"]


def _reshape_change(existing: Document, want: Document, since_ts: int) -> Document:
    """Replace the shape fields, compare-and-set on the old marker; `_id` and read state stay."""
    fields: Document = {f: want[f] for f in SHAPE_FIELDS if f in want}
    fields[SHAPED_BY] = want[SHAPED_BY]
    unset: Document = {f: "" for f in SHAPE_FIELDS if f not in want}
    unset["nameUpdatedAt"] = ""  # the name is the event's again; the room's rename register is re-applied after
    if existing.get("rolesUpdatedAt", 0) > since_ts:  # a role change of this membership, applied already: keep it
        fields.pop("roles", None)
    else:  # an earlier membership's role change (or none) gives way to the add's roles
        unset["rolesUpdatedAt"] = ""
    return {"shapedBy": existing[SHAPED_BY], "u": {"$set": fields, "$unset": unset}}


def run_updates(coll: Collection[Document], updates: Sequence[Document]) -> None:
    """Send raw `update` statements (unordered, a command per chunk); raises `WriteRejected` on any refused one."""
    for chunk in _chunks(updates):
        # raw command: pymongo's bulk_write cannot parse FerretDB's reply when a statement fails
        reply = coll.database.command("update", coll.name, updates=list(chunk), ordered=False)
        if errors := reply.get("writeErrors"):
            raise WriteRejected(f"update {coll.name}: {errors[:3]}")



def _failure(change: Change, failures: Mapping[tuple[mirror.Kind, MemberKey], str]) -> str | None:
    return failures.get((change.kind, (change.room_id, change.account)))
