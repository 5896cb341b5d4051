"""inbox_mirror's pure rules: decode a delivery into per-(room, account) changes, coalesce a batch, guard decisions.

The guard (docs/inbox_mirror.md) is a last-write-wins register per (room, account), stored as
append-only versions; `version` = envelope timestamp * 2 + (1 for a remove), so a remove wins a
tie with an add and every replica picks the same winner whatever the arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final, TypeAlias, TypeGuard

import msgspec

from logic.identifiers import identifier_problem
from logic.membership import subscription_from_event
from logic.origin import origin_problem
from schemas.carriers import Delivery, Settle, Verdict, done, poison
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
    effective_room_type,
)

IGNORED_PREFIX: Final = "ignored: "


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
    """One of `parts` pieces of work derived from `delivery`; `account` is "" for a rename."""

    delivery: Delivery
    parts: int
    kind: Kind
    room_id: str
    account: str = ""
    ts: int  # envelope timestamp
    added: MemberAddEvent | None = None  # ADD: the event the subscription is shaped from
    roles: list[str] | None = None  # ROLES
    name: str = ""  # RENAME


class Guard(msgspec.Struct, frozen=True, kw_only=True):
    """A stored guard register (collection `membership_guards`, `_id` = `guard_id(room, account)`)."""

    version: int
    state: GuardState
    ts: int


Decoded: TypeAlias = Change | Settle
MemberKey: TypeAlias = tuple[str, str]  # (room id, account)


def version_of(kind: Kind, ts: int) -> int:
    """The guard order of a membership change: by timestamp, a remove after an add of the same ms."""
    return ts * 2 + (1 if kind is Kind.REMOVE else 0)


def guard_id(room_id: str, account: str) -> str:
    """`_id` of a guard register; a NUL separator cannot occur in either token."""
    return f"{room_id}\x00{account}"


def is_change(item: Decoded) -> TypeGuard[Change]:
    """Whether a decoded item is work for the writer (otherwise it is already settled)."""
    return isinstance(item, Change)


def room_key(change: Change) -> str:
    """Key by room: a rename touches every subscription of its room, so a room's changes meet on one worker."""
    return change.room_id


def is_ignored(settle: Settle) -> bool:
    """An ack for a message with an unknown `type` (counted, nothing written)."""
    return settle.verdict is Verdict.ACK and settle.reason.startswith(IGNORED_PREFIX)


def decode(delivery: Delivery) -> list[Decoded]:
    """The changes of one message, or a single `Settle` (poison, unknown type, nothing to do)."""
    try:
        envelope = decode_envelope(delivery.data)
        event = decode_payload(envelope)
    except DecodeError as exc:
        return [poison(delivery, str(exc))]
    ts = envelope.timestamp
    room_site = event.site_id if isinstance(event, (MemberAddEvent, MemberRemoveEvent)) else None
    # a site only announces its own rooms, proven by the OUTBOX the server sourced it from (issue 7)
    problem = origin_problem(delivery.headers, envelope_site=envelope.site_id, room_site=room_site)
    if problem is None and event is not None:
        problem = _identifier_problem(event)
    if problem is not None:
        return [poison(delivery, problem)]
    if event is None:
        return [msgspec.structs.replace(done(delivery, ts), reason=f"{IGNORED_PREFIX}unknown type {envelope.type!r}")]
    changes = _changes(delivery, event, ts)
    if isinstance(changes, Settle):
        return [changes]
    if not changes:  # an event listing no account: nothing to write, still acknowledged
        return [done(delivery, ts)]
    return list(changes)


def _identifier_problem(event: InnerEvent) -> str | None:
    """Room ids and accounts end up in document ids and subjects: one valid token each (issue 7)."""
    if isinstance(event, (MemberAddEvent, MemberRemoveEvent)):
        return identifier_problem(room_ids=[event.room_id], accounts=event.accounts)
    if isinstance(event, RoleUpdatedEvent):
        return identifier_problem(room_ids=[event.subscription.room_id], accounts=[event.subscription.u.account])
    return identifier_problem(room_ids=[event.room_id])


def _changes(delivery: Delivery, event: object, ts: int) -> list[Change] | Settle:
    if isinstance(event, MemberAddEvent):
        n = len(event.accounts)
        return [Change(delivery=delivery, parts=n, kind=Kind.ADD, room_id=event.room_id, account=a, ts=ts, added=event) for a in event.accounts]
    if isinstance(event, MemberRemoveEvent):
        n = len(event.accounts)
        return [Change(delivery=delivery, parts=n, kind=Kind.REMOVE, room_id=event.room_id, account=a, ts=ts) for a in event.accounts]
    if isinstance(event, RoleUpdatedEvent):
        sub = event.subscription
        if not sub.roles:
            return poison(delivery, "role_updated: empty roles")
        return [Change(delivery=delivery, parts=1, kind=Kind.ROLES, room_id=sub.room_id, account=sub.u.account, ts=ts, roles=list(sub.roles))]
    if isinstance(event, RoomRenamedEvent):
        if not event.new_name:
            return poison(delivery, "room_renamed: empty newName")
        return [Change(delivery=delivery, parts=1, kind=Kind.RENAME, room_id=event.room_id, ts=ts, name=event.new_name)]
    raise TypeError(type(event).__name__)  # decode_payload returned a type this module does not know


class BatchPlan(msgspec.Struct, kw_only=True):
    """A batch coalesced per target: only the newest change of each target is written."""

    membership: dict[MemberKey, Change] = msgspec.field(default_factory=dict)  # highest version
    roles: dict[MemberKey, Change] = msgspec.field(default_factory=dict)  # newest
    renames: dict[str, Change] = msgspec.field(default_factory=dict)  # newest, by room


def plan(changes: Iterable[Change]) -> BatchPlan:
    """Coalesce a batch: per (room, account) the winning membership change and the newest roles, per room the newest name."""
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
        else:
            current = out.membership.get(key)
            if current is None or version_of(change.kind, change.ts) > version_of(current.kind, current.ts):
                out.membership[key] = change
    return out


def guard_for(change: Change) -> Guard:
    """The register value a membership change writes if it is newer than the stored one."""
    state = GuardState.REMOVED if change.kind is Kind.REMOVE else GuardState.ADDED
    return Guard(version=version_of(change.kind, change.ts), state=state, ts=change.ts)


def is_newer(change: Change, current: Guard | None) -> bool:
    """Whether a membership change beats the register's current value (and so is written)."""
    return current is None or guard_for(change).version > current.version


def should_delete(final: Guard | None) -> bool:
    """The register's final state is a removal: the subscription must not exist, whoever wrote it."""
    return final is not None and final.state is GuardState.REMOVED


def should_exist(final: Guard | None) -> bool:
    """The register's final state is an add: its subscription must exist (insert-only)."""
    return final is not None and final.state is GuardState.ADDED


def is_stale_roles(change: Change, guard: Guard | None) -> bool:
    """A role change no newer than the last add/remove of its member belongs to an earlier membership."""
    return guard is not None and change.ts <= guard.ts


def effective_type(change: Change) -> str:
    """The room type an add's subscription gets (empty means channel)."""
    return effective_room_type(change.added) if change.added is not None else ""


def subscription_of(change: Change, *, user_id: str, sub_id: str) -> Subscription:
    """The subscription an add inserts (SYSTEM.md §4), shaped from its event alone."""
    if change.added is None:
        msg = f"{change.kind} change has no member_added event"
        raise ValueError(msg)
    return subscription_from_event(change.added, account=change.account, user_id=user_id, sub_id=sub_id)


def oracle(changes: Iterable[Change]) -> set[MemberKey]:
    """Memberships present after applying `changes` in version order (the convergence target of the tests)."""
    final: dict[MemberKey, Change] = plan(c for c in changes if c.kind in (Kind.ADD, Kind.REMOVE)).membership
    return {key for key, change in final.items() if change.kind is Kind.ADD}


def unknown_account_reason(account: str) -> str:
    """Retry reason of an add for an account missing from the local `users` collection."""
    return f"unknown account {account!r} on this site"
