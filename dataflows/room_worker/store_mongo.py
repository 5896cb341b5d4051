"""Every MongoDB read and write of room_worker: users, rooms, subscriptions, room_members, intents and request records.

`RoomStore` implements store.Store; a MongoDB that is away surfaces as store.StoreUnavailable from the Store methods.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, ParamSpec, TypeVar

import msgspec
from bson import Binary
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from connectors import metrics
from connectors.mongo import TRANSIENT_ERRORS, Document, delete_in, find_in, insert_missing
from dataflows.room_worker.outcomes import Outcome, Rename, RoomWrites, SetRoles, decode_outcome, encode_outcome
from dataflows.room_worker.plans import room_counts
from dataflows.room_worker.store import Claim, IntentPending, Member, StoreUnavailable
from schemas import names
from schemas.documents import (
    MemberType,
    Room,
    RoomMember,
    Subscription,
    User,
    from_mongo,
    to_mongo,
)

FLOW: Final = names.ROOM_WORKER_FLOW
INTENTS: Final = "room_intents"  # _id = room id: the room's decided, unfinished command
RECORDS: Final = "room_requests"  # _id = request key: the answer of a finished command

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable(method: Callable[P, R]) -> Callable[P, R]:
    """A Store method whose MongoDB outage raises `StoreUnavailable` (the one transient class the runner knows)."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except TRANSIENT_ERRORS as exc:
            msg = f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(msg) from exc

    return call


def _member(doc: Document) -> Member:
    return Member(user_id=doc["u"].get("_id", ""), is_bot=bool(doc["u"].get("isBot")), roles=list(doc.get("roles") or []))


def _answer(outcome: Outcome) -> Outcome:
    """What a request's record keeps: its result, not its writes and events."""
    return msgspec.structs.replace(outcome, writes=RoomWrites(), publishes=[], notices=[])


def _older(field: str, at: int) -> dict[str, object]:
    """A guard: `field` is absent or older than `at` (the same guard inbox_mirror writes on mirrored subscriptions)."""
    return {"$or": [{field: {"$exists": False}}, {field: {"$lt": at}}]}


def _intent_doc(claim: Claim, now_ms: int) -> dict[str, object]:
    outcome = claim.outcome
    return {"_id": outcome.room_id, "request": outcome.request_key, "nonce": claim.nonce, "outcome": Binary(encode_outcome(outcome)), "ts": now_ms}


def _record_doc(claim: Claim, now_ms: int) -> dict[str, object]:
    outcome = claim.outcome
    return {"_id": outcome.request_key, "rid": outcome.room_id, "nonce": claim.nonce, "outcome": Binary(encode_outcome(_answer(outcome))), "ts": now_ms}


class RoomStore:
    """MongoDB I/O of one site's room_worker; every write is idempotent (SYSTEM.md §3)."""

    def __init__(self, db: Database[Document]) -> None:
        self._db = db

    @_unavailable
    def users_by_accounts(self, accounts: Iterable[str]) -> dict[str, User]:
        """Users found for `accounts`, by account."""
        wanted = sorted(set(accounts))
        if not wanted:
            return {}
        return {u.account: u for u in (from_mongo(User, d) for d in find_in(self._db.users, "account", wanted))}

    @_unavailable
    def org_members(self, orgs: Iterable[str]) -> list[User]:
        """Users whose `sectId` or `deptId` is one of `orgs`."""
        wanted = sorted(set(orgs))
        if not wanted:
            return []
        # one `$in` per field, not an `$or` of them: FerretDB pushes `$in` down to an index (our patch), never `$or`
        found = {d["_id"]: d for field in ("sectId", "deptId") for d in find_in(self._db.users, field, wanted)}
        return [from_mongo(User, d) for d in found.values()]

    @_unavailable
    def room(self, room_id: str) -> Room | None:
        """The room document, or `None`."""
        doc = self._db.rooms.find_one({"_id": room_id})
        return None if doc is None else from_mongo(Room, doc)

    @_unavailable
    def rooms(self, room_ids: Iterable[str]) -> dict[str, Room | None]:
        """Each room by id (`None`: no such room), in one query."""
        wanted = sorted(set(room_ids))
        found: dict[str, Room | None] = dict.fromkeys(wanted)
        if wanted:
            found |= {d["_id"]: from_mongo(Room, d) for d in find_in(self._db.rooms, "_id", wanted)}
        return found

    @_unavailable
    def members_of(self, room_ids: Iterable[str]) -> dict[str, dict[str, Member]]:
        """`members` of each room, in one query."""
        wanted = sorted(set(room_ids))
        found: dict[str, dict[str, Member]] = {room: {} for room in wanted}
        if wanted:
            for d in find_in(self._db.subscriptions, "roomId", wanted, projection={"roomId": 1, "u": 1, "roles": 1}):
                found[d["roomId"]][d["u"]["account"]] = _member(d)
        return found

    @_unavailable
    def orgs_of(self, room_ids: Iterable[str]) -> dict[str, set[str]]:
        """`room_orgs` of each room, in one query."""
        wanted = sorted(set(room_ids))
        found: dict[str, set[str]] = {room: set() for room in wanted}
        if wanted:
            for r in find_in(self._db.room_members, "rid", wanted, also={"member.type": MemberType.ORG.value}, projection={"rid": 1, "member": 1}):
                found[r["rid"]].add(r["member"]["id"])
        return found

    def insert_room(self, room: Room) -> tuple[Room, bool]:
        """Insert `room` unless a room with its id exists; return what is stored and whether this call inserted it."""
        try:
            self._db.rooms.insert_one(to_mongo(room))
        except DuplicateKeyError:
            stored = self.room(room.id)
            if stored is None:  # pragma: no cover - a duplicate key means it exists
                raise
            return stored, False
        return room, True

    @_unavailable
    def members(self, room_id: str) -> dict[str, Member]:
        """The room's subscriptions by account: members' user ids, bot flags and roles, in one query.

        On FerretDB/SQLite every filter but `_id` scans the collection, so a command reads its room's
        subscriptions once and derives roles and counts from that (docs/inbox_mirror.md, "FerretDB facts").
        """
        docs = self._db.subscriptions.find({"roomId": room_id}, {"u": 1, "roles": 1})
        return {d["u"]["account"]: _member(d) for d in docs}

    def insert_subscriptions(self, subs: Sequence[Subscription]) -> int:
        """Insert-only on the unique `(roomId, u.account)`: a replay never overwrites read state."""
        started = time.perf_counter()
        inserted = len(subs) - len(insert_missing(self._db.subscriptions, [to_mongo(s) for s in subs]))
        metrics.observe_write(FLOW, "mongo", len(subs), time.perf_counter() - started)
        return inserted

    def delete_subscriptions(self, room_id: str, accounts: Sequence[str]) -> int:
        """Delete these accounts' subscriptions to the room."""
        if not accounts:
            return 0
        return int(self._db.subscriptions.delete_many({"roomId": room_id, "u.account": {"$in": list(accounts)}}).deleted_count)

    def drop_owner(self, room_id: str, account: str) -> None:
        """Take the owner role from `account` (an org member who stops being an individual member)."""
        self._db.subscriptions.update_one({"roomId": room_id, "u.account": account}, {"$pull": {"roles": "owner"}})

    def recount(self, room_id: str, now_ms: int) -> None:
        """Recompute `userCount` (humans) and `appCount` (bots) from the stored subscriptions (one scan)."""
        self.set_counts(room_id, room_counts({a: m.is_bot for a, m in self.members(room_id).items()}), now_ms)

    def set_counts(self, room_id: str, counts: tuple[int, int], now_ms: int) -> None:
        """Set (`userCount`, `appCount`); a replay that changes no count changes nothing (not even `updatedAt`)."""
        users, apps = counts
        changed = {"_id": room_id, "$or": [{"userCount": {"$ne": users}}, {"appCount": {"$ne": apps}}]}
        self._db.rooms.update_one(changed, {"$set": {"userCount": users, "appCount": apps, "updatedAt": now_ms}})

    @_unavailable
    def room_orgs(self, room_id: str) -> set[str]:
        """Ids of the orgs that are members of the room."""
        rows = self._db.room_members.find({"rid": room_id, "member.type": MemberType.ORG.value}, {"member": 1})
        return {r["member"]["id"] for r in rows}

    @_unavailable
    def subscription(self, room_id: str, account: str) -> Subscription | None:
        """`account`'s whole subscription to the room, or `None`."""
        doc = self._db.subscriptions.find_one({"roomId": room_id, "u.account": account})
        return None if doc is None else from_mongo(Subscription, doc)

    def set_roles(self, room_id: str, change: SetRoles) -> None:
        """`roles` of one member, unless a role change at least as new was applied (`rolesUpdatedAt`)."""
        guarded = {"roomId": room_id, "u.account": change.account, **_older("rolesUpdatedAt", change.at)}
        self._db.subscriptions.update_one(guarded, {"$set": {"roles": change.roles, "rolesUpdatedAt": change.at}})

    def rename(self, room_id: str, change: Rename) -> None:
        """The room's `name` and every subscription's, each unless a rename at least as new was applied (`nameUpdatedAt`)."""
        guard = _older("nameUpdatedAt", change.at)
        self._db.rooms.update_one({"_id": room_id, **guard}, {"$set": {"name": change.name, "nameUpdatedAt": change.at, "updatedAt": change.updated_at}})
        self._db.subscriptions.update_many({"roomId": room_id, **guard}, {"$set": {"name": change.name, "nameUpdatedAt": change.at}})

    @_unavailable
    def individual_ids(self, room_id: str) -> set[str]:
        """User ids of the room's individual members (`room_members` rows)."""
        rows = self._db.room_members.find({"rid": room_id, "member.type": MemberType.INDIVIDUAL.value}, {"member": 1})
        return {r["member"]["id"] for r in rows}

    def insert_room_members(self, rows: Sequence[RoomMember]) -> int:
        """Insert-only on the unique `(rid, member.type, member.id)`."""
        return len(rows) - len(insert_missing(self._db.room_members, [to_mongo(r) for r in rows]))

    def delete_room_member(self, room_id: str, member_type: MemberType, member_id: str) -> None:
        """Delete one `room_members` row."""
        self._db.room_members.delete_one({"rid": room_id, "member.type": member_type.value, "member.id": member_id})

    @_unavailable
    def apply(self, outcome: Outcome, now_ms: int) -> None:
        """Carry out one command's writes; each is idempotent, so a second run changes nothing."""
        self._apply_writes(outcome.room_id, outcome.writes, now_ms)

    def _apply_writes(self, room_id: str, writes: RoomWrites, now_ms: int) -> None:
        if writes.room is not None:
            self.insert_room(writes.room)
        self.insert_subscriptions(writes.subscriptions)
        self.insert_room_members(writes.room_members)
        self.delete_subscriptions(room_id, writes.unsubscribe)
        for row in writes.drop_rows:
            self.delete_room_member(room_id, MemberType(row.type), row.id)
        for account in writes.drop_owner:
            self.drop_owner(room_id, account)
        if writes.counts is not None:
            self.set_counts(room_id, writes.counts, now_ms)
        for change in writes.set_roles:
            self.set_roles(room_id, change)
        if writes.rename is not None:
            self.rename(room_id, change=writes.rename)

    @_unavailable
    def apply_many(self, outcomes: Sequence[Outcome], now_ms: int) -> None:
        """`apply` for commands of different rooms: their inserts in one request per collection."""
        rooms = [to_mongo(o.writes.room) for o in outcomes if o.writes.room is not None]
        insert_missing(self._db.rooms, rooms)
        self.insert_subscriptions([sub for o in outcomes for sub in o.writes.subscriptions])
        self.insert_room_members([row for o in outcomes for row in o.writes.room_members])
        for outcome in outcomes:
            rest = msgspec.structs.replace(outcome.writes, room=None, subscriptions=[], room_members=[])
            if rest != RoomWrites():
                self._apply_writes(outcome.room_id, rest, now_ms)

    @_unavailable
    def rooms_with_intents(self, room_ids: Iterable[str]) -> set[str]:
        """Which of these rooms have an unfinished command (one small query: only unfinished ones are kept)."""
        wanted = sorted(set(room_ids))
        if not wanted:
            return set()
        return {d["_id"] for d in find_in(self._db[INTENTS], "_id", wanted, projection={"_id": 1})}

    @_unavailable
    def save_intents(self, claims: Sequence[Claim], now_ms: int) -> set[str]:
        """`save_intent` for commands of different rooms in one request; returns the rooms that had one already."""
        return insert_missing(self._db[INTENTS], [_intent_doc(c, now_ms) for c in claims])

    @_unavailable
    def record_many(self, claims: Sequence[Claim], now_ms: int) -> dict[str, Claim]:
        """`record` for many requests in one request; returns the answers recorded before, by request key."""
        taken = insert_missing(self._db[RECORDS], [_record_doc(c, now_ms) for c in claims])
        return {key: self._recorded(key) for key in sorted(taken)}

    @_unavailable
    def clear_intents(self, room_ids: Iterable[str]) -> None:
        wanted = sorted(set(room_ids))
        if wanted:
            delete_in(self._db[INTENTS], "_id", wanted)

    def _recorded(self, request_key: str) -> Claim:
        stored = self._db[RECORDS].find_one({"_id": request_key})
        if stored is None:  # pragma: no cover - a duplicate key means it exists
            msg = f"request {request_key} vanished from {RECORDS}"
            raise LookupError(msg)
        return Claim(outcome=decode_outcome(bytes(stored["outcome"])), nonce=stored["nonce"])

    @_unavailable
    def intent(self, room_id: str) -> Claim | None:
        """The room's decided but unfinished command, if any (the collection holds only unfinished ones: small)."""
        doc = self._db[INTENTS].find_one({"_id": room_id})
        return None if doc is None else Claim(outcome=decode_outcome(bytes(doc["outcome"])), nonce=doc["nonce"])

    @_unavailable
    def save_intent(self, claim: Claim, now_ms: int) -> None:
        """Make `claim` the room's pending command, before its record and any of its writes."""
        try:
            self._db[INTENTS].insert_one(_intent_doc(claim, now_ms))
        except DuplicateKeyError as exc:
            raise IntentPending(claim.outcome.room_id) from exc

    @_unavailable
    def clear_intent(self, room_id: str) -> None:
        self._db[INTENTS].delete_one({"_id": room_id})

    @_unavailable
    def record(self, claim: Claim, now_ms: int) -> Claim:
        """Record `claim` as its request's one answer, unless one is recorded already: return the recorded one.

        An insert, so a new request costs no lookup (on FerretDB/SQLite every lookup scans the collection, and
        this one holds a week of requests); only a retry or redelivery reads the record back.
        """
        try:
            self._db[RECORDS].insert_one(_record_doc(claim, now_ms))
        except DuplicateKeyError:
            return self._recorded(claim.outcome.request_key)
        return Claim(outcome=_answer(claim.outcome), nonce=claim.nonce)

    def purge_records(self, older_than_ms: int) -> int:
        """Forget answered requests older than any delivery or client retry of them can be (start-up)."""
        return int(self._db[RECORDS].delete_many({"ts": {"$lt": older_than_ms}}).deleted_count)
