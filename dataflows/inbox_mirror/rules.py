"""inbox_mirror's pure rules: decode a delivery into per-(room, account) changes, coalesce a batch, guard decisions.

The guard (docs/inbox_mirror.md) is a register per (room, account), stored as append-only versions;
`version` = envelope timestamp * 2 + (1 for a remove), so a remove wins a tie with an add and every
replica folds the same versions to the same membership whatever the arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeAlias, TypeGuard

import msgspec

from schemas.carriers import AckHandle, Delivery, Settle, done, ignored, poison
from schemas.documents import Subscription
from schemas.envelope import decode_envelope
from schemas.errors import DecodeError
from schemas.events import (
    InnerEvent,
    MemberAddEvent,
    MemberRemoveEvent,
    RoleUpdatedEvent,
    RoomRenamedEvent,
    decode_payload,
)
from schemas.membership import subscription_from_event
from schemas.names import identifier_problem
from schemas.origin import origin_problem


class Kind(StrEnum):
    """What a change does to the subscriptions of its room."""

    ADD = "add"
    REMOVE = "remove"
    ROLES = "roles"
    RENAME = "rename"


class GuardState(StrEnum):
    """The last applied membership change of a (room, account)."""

    ADDED = "added"
    REMOVED = "removed"


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of work derived from a message (whose `ack` it carries); `account` is "" for a rename."""

    ack: AckHandle
    kind: Kind
    room_id: str
    account: str = ""
    ts: int  # envelope timestamp
    added: MemberAddEvent | None = None  # ADD: the event the subscription is shaped from, cut to this account (`_cut`)
    roles: list[str] | None = None  # ROLES
    name: str = ""  # RENAME


class Guard(msgspec.Struct, frozen=True, kw_only=True):
    """A stored guard register (collection `membership_guards`, `_id` = `guard_id(room, account)`)."""

    version: int
    state: GuardState
    ts: int


Decoded: TypeAlias = list[Change] | Settle
MemberKey: TypeAlias = tuple[str, str]  # (room id, account)


def version_of(kind: Kind, ts: int) -> int:
    """The guard order of a membership change: by timestamp, a remove after an add of the same ms."""
    return ts * 2 + (1 if kind is Kind.REMOVE else 0)


def guard_id(room_id: str, account: str) -> str:
    """`key` of a guard register; a space cannot occur in either token (`schemas.names`; no NUL: PostgreSQL refuses it)."""
    return f"{room_id} {account}"


def is_change(item: Change | Settle) -> TypeGuard[Change]:
    """Whether a decoded item is work for the writer (otherwise it is already settled)."""
    return isinstance(item, Change)


def room_key(change: Change) -> str:
    """Key by room: a rename touches every subscription of its room, so a room's changes meet on one worker."""
    return change.room_id


def decode(delivery: Delivery) -> Decoded:
    """The changes of one message, or its `Settle` (poison, unknown type, nothing to do)."""
    try:
        envelope = decode_envelope(delivery.data)
        event = decode_payload(envelope)
    except DecodeError as exc:
        return poison(delivery, str(exc))
    ts = envelope.timestamp
    room_site = event.site_id if isinstance(event, (MemberAddEvent, MemberRemoveEvent)) else None
    # a site only announces its own rooms, proven by the OUTBOX the server sourced it from (issue 7)
    problem = origin_problem(delivery.headers, envelope_site=envelope.site_id, room_site=room_site)
    if problem is None and event is not None:
        problem = _identifier_problem(event) or _nul_problem(event)
    if problem is not None:
        return poison(delivery, problem)
    if event is None:
        return ignored(delivery, f"unknown type {envelope.type!r}", ts)
    changes = _changes(AckHandle(reply=delivery.reply, event_ms=ts), event, ts)
    if isinstance(changes, str):
        return poison(delivery, changes)
    if not changes:  # an event listing no account: nothing to write, still acknowledged
        return done(delivery, ts)
    return changes


def _identifier_problem(event: InnerEvent) -> str | None:
    """Room ids and accounts end up in document ids and subjects: one valid token each (issue 7)."""
    if isinstance(event, (MemberAddEvent, MemberRemoveEvent)):
        return identifier_problem(room_ids=[event.room_id], accounts=event.accounts)
    if isinstance(event, RoleUpdatedEvent):
        return identifier_problem(room_ids=[event.subscription.room_id], accounts=[event.subscription.u.account])
    return identifier_problem(room_ids=[event.room_id])


def _nul_problem(event: InnerEvent) -> str | None:
    """A NUL character in any string: the store (FerretDB on PostgreSQL: jsonb) refuses the document for good."""

    def has_nul(value: object) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(has_nul(v) for v in value.values())
        return isinstance(value, list) and any(has_nul(v) for v in value)

    return "a string holds a NUL character, which the store cannot hold" if has_nul(msgspec.to_builtins(event)) else None


def _changes(ack: AckHandle, event: object, ts: int) -> list[Change] | str:
    """The changes of `event`, or why it is poison."""
    if isinstance(event, MemberAddEvent):
        return [Change(ack=ack, kind=Kind.ADD, room_id=event.room_id, account=a, ts=ts, added=_cut(event, a)) for a in event.accounts]
    if isinstance(event, MemberRemoveEvent):
        return [Change(ack=ack, kind=Kind.REMOVE, room_id=event.room_id, account=a, ts=ts) for a in event.accounts]
    if isinstance(event, RoleUpdatedEvent):
        sub = event.subscription
        if not sub.roles:
            return "role_updated: empty roles"
        return [Change(ack=ack, kind=Kind.ROLES, room_id=sub.room_id, account=sub.u.account, ts=ts, roles=list(sub.roles))]
    if isinstance(event, RoomRenamedEvent):
        if not event.new_name:
            return "room_renamed: empty newName"
        return [Change(ack=ack, kind=Kind.RENAME, room_id=event.room_id, ts=ts, name=event.new_name)]
    raise TypeError(type(event).__name__)  # decode_payload returned a type this module does not know


def _cut(event: MemberAddEvent, account: str) -> MemberAddEvent:
    """`event` listing only `account` and its first other account (what `counterpart_of` reads): an add for N
    accounts would otherwise travel N times with all N accounts."""
    other = next((a for a in event.accounts if a != account), None)
    return msgspec.structs.replace(event, accounts=[account] if other is None else [account, other])


class BatchPlan(msgspec.Struct, kw_only=True):
    """A batch coalesced per target: every distinct membership version, the newest roles and name."""

    membership: dict[MemberKey, dict[int, Change]] = msgspec.field(default_factory=dict)  # by version
    roles: dict[MemberKey, Change] = msgspec.field(default_factory=dict)  # newest
    renames: dict[str, Change] = msgspec.field(default_factory=dict)  # newest, by room


def plan(changes: Iterable[Change]) -> BatchPlan:
    """Coalesce a batch: per (room, account) its distinct add/remove versions and the newest roles, per room the newest name."""
    out = BatchPlan()
    for change in changes:
        key = (change.room_id, change.account)
        if change.kind is Kind.RENAME:
            current = out.renames.get(change.room_id)
            if current is None or change.ts > current.ts:
                out.renames[change.room_id] = change
        elif change.kind is Kind.ROLES:
            current = out.roles.get(key)
            if current is None or change.ts > current.ts:
                out.roles[key] = change
        else:  # not only the newest: an older add may shape the subscription (SYSTEM.md §4)
            out.membership.setdefault(key, {}).setdefault(version_of(change.kind, change.ts), change)
    return out


def guard_for(change: Change) -> Guard:
    """The register version a membership change writes."""
    state = GuardState.REMOVED if change.kind is Kind.REMOVE else GuardState.ADDED
    return Guard(version=version_of(change.kind, change.ts), state=state, ts=change.ts)


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    """A register's versions applied in version order: the last remove, and the add that starts the membership after it.

    `since` is the OLDEST add newer than `removed`: in timestamp order it inserted the subscription and every later
    add left it alone, so it shapes the subscription. `since is None` means the member is absent.
    """

    removed: Guard | None = None
    since: Guard | None = None

    @property
    def floor(self) -> int:
        """Versions below this can never matter again (older than the last remove)."""
        return -1 if self.removed is None else self.removed.version

    @property
    def last(self) -> Guard | None:
        """The version that decides presence: `since` when present, else the last remove."""
        return self.since if self.since is not None else self.removed


def fold(guards: Iterable[Guard]) -> Membership:
    """The membership that applying `guards` in version order leaves (any order, duplicates allowed)."""
    versions = list(guards)
    removes = [g for g in versions if g.state is GuardState.REMOVED]
    removed = max(removes, key=lambda g: g.version) if removes else None
    floor = -1 if removed is None else removed.version
    adds = [g for g in versions if g.state is GuardState.ADDED and g.version > floor]
    return Membership(removed=removed, since=min(adds, key=lambda g: g.version) if adds else None)


def needed(changes: Iterable[Change], stored: Iterable[Guard]) -> tuple[list[Change], Membership]:
    """The batch's versions the register still lacks and needs (none older than the last remove), and the folded result."""
    have = {g.version: g for g in stored}
    batch = {version_of(c.kind, c.ts): c for c in changes}
    result = fold([*have.values(), *(guard_for(c) for c in batch.values())])
    fresh = [c for v, c in sorted(batch.items()) if v not in have and v >= result.floor]
    return fresh, result


def should_delete(final: Membership) -> bool:
    """The last change is a removal: the subscription must not exist, whoever wrote it."""
    return final.since is None and final.removed is not None


def should_exist(final: Membership) -> bool:
    """The member is present: the subscription shaped by `since` must exist."""
    return final.since is not None


def needs_reshape(shaped_by: int | None, final: Membership) -> bool:
    """Whether an existing subscription (carrying the shape of add version `shaped_by`) must take `final.since`'s shape.

    Newer than `since`: an older add of the same membership arrived late. Older than the last remove: a late remove
    ended the membership it came from. Older but with no remove between: its add was purged past the horizon, keep it.
    No marker: written before shapes were tracked, left as is (SYSTEM.md §4).
    """
    if final.since is None or shaped_by is None or shaped_by == final.since.version:
        return False
    return shaped_by > final.since.version or shaped_by < final.floor


def is_stale_roles(change: Change, guard: Guard | None) -> bool:
    """A role change no newer than the start of its member's membership (or its last remove) belongs to an earlier one."""
    return guard is not None and change.ts <= guard.ts


def subscription_of(change: Change, *, user_id: str, sub_id: str) -> Subscription:
    """The subscription an add inserts (SYSTEM.md §4), shaped from its event alone."""
    if change.added is None:
        msg = f"{change.kind} change has no member_added event"
        raise ValueError(msg)
    return subscription_from_event(change.added, account=change.account, user_id=user_id, sub_id=sub_id)


def oracle(changes: Iterable[Change]) -> set[MemberKey]:
    """Memberships present after applying `changes` in version order (the convergence target of the tests)."""
    keys: dict[MemberKey, list[Guard]] = {}
    for c in changes:
        if c.kind in (Kind.ADD, Kind.REMOVE):
            keys.setdefault((c.room_id, c.account), []).append(guard_for(c))
    return {key for key, guards in keys.items() if should_exist(fold(guards))}


def unknown_account_reason(account: str) -> str:
    """Retry reason of an add for an account missing from the local `users` collection."""
    return f"unknown account {account!r} on this site"
