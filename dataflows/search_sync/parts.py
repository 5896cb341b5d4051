"""search_sync's decode step: an INBOX delivery into per-document parts (one per account; a rename per room), or poison."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeAlias, TypeGuard

import msgspec

from schemas.carriers import AckHandle, Delivery, Settle, poison
from schemas.envelope import EventType, decode_envelope
from schemas.errors import DecodeError
from schemas.events import (
    MemberAddEvent,
    MemberRemoveEvent,
    RoomRenamedEvent,
    decode_member_added,
    decode_member_removed,
    decode_room_renamed,
    effective_room_type,
)
from schemas.membership import counterpart_of, is_direct
from schemas.names import identifier_problem
from schemas.origin import origin_problem
from schemas.subjects import parse_inbox

# a rename is keyed by room; whitespace can never occur in an account (a subject token)
RENAME_KEY_PREFIX: Final = "room "


class MemberChange(msgspec.Struct, frozen=True, kw_only=True):
    """One account's share of a `member_added` / `member_removed` message."""

    ack: AckHandle  # the message's, shared by its parts
    account: str
    room_id: str
    ts: int  # envelope timestamp: the last-write-wins clock (SYSTEM.md §5)
    added: bool
    room_name: str = ""  # for dm / botDM: the counterpart's account
    room_type: str = ""
    site_id: str = ""
    joined_at: int = 0
    history_shared_since: int = 0  # > 0: restricted room


class RoomRename(msgspec.Struct, frozen=True, kw_only=True):
    """A `room_renamed` message: a single part, keyed by room."""

    ack: AckHandle
    room_id: str
    name: str
    ts: int


Part: TypeAlias = MemberChange | RoomRename
Parsed: TypeAlias = list[Part] | Settle


def parse(delivery: Delivery) -> Parsed:
    """The parts of one delivery, or a poison `Settle` naming why it can never be applied."""
    try:
        envelope = decode_envelope(delivery.data)
        event: MemberAddEvent | MemberRemoveEvent | RoomRenamedEvent
        if envelope.type == EventType.MEMBER_ADDED:
            event = decode_member_added(envelope.payload)
        elif envelope.type == EventType.MEMBER_REMOVED:
            event = decode_member_removed(envelope.payload)
        elif envelope.type == EventType.ROOM_RENAMED:
            event = decode_room_renamed(envelope.payload)
        else:
            return poison(delivery, f"unexpected event type {envelope.type!r} on {delivery.subject}")
    except DecodeError as exc:
        return poison(delivery, str(exc))
    problem = _untrusted(delivery, envelope.site_id, event)
    if problem:
        return poison(delivery, problem)
    if isinstance(event, MemberAddEvent):
        return _added_parts(delivery, event, envelope.timestamp)
    if isinstance(event, MemberRemoveEvent):
        return _removed_parts(delivery, event, envelope.timestamp)
    return _rename_parts(delivery, event, envelope.timestamp)


def _ack(delivery: Delivery, ts: int) -> AckHandle:
    return AckHandle(reply=delivery.reply, event_ms=ts)


def _untrusted(delivery: Delivery, envelope_site: str, event: MemberAddEvent | MemberRemoveEvent | RoomRenamedEvent) -> str | None:
    """Why the event must not be applied: an unproven origin on the aggregate lane, or unusable ids (issue 7)."""
    lane = parse_inbox(delivery.subject)
    if lane is not None and lane.lane == "aggregate":
        room_site = None if isinstance(event, RoomRenamedEvent) else event.site_id
        problem = origin_problem(delivery.headers, envelope_site=envelope_site, room_site=room_site)
        if problem:
            return problem
    accounts = () if isinstance(event, RoomRenamedEvent) else event.accounts
    return identifier_problem(room_ids=[event.room_id], accounts=accounts)


def is_parts(parsed: Parsed) -> TypeGuard[list[Part]]:
    """Whether `parse` produced work rather than a poison verdict."""
    return isinstance(parsed, list)


def part_key(part: Part) -> str:
    """The document owner a part is routed by: the account, or the room for a rename."""
    if isinstance(part, MemberChange):
        return part.account
    return RENAME_KEY_PREFIX + part.room_id


def _unique(accounts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(accounts))


def _added_parts(delivery: Delivery, event: MemberAddEvent, ts: int) -> Parsed:
    accounts = _unique(event.accounts)
    if not accounts:
        return poison(delivery, "member_added: no accounts")
    room_type = effective_room_type(event)
    hss = event.history_shared_since if isinstance(event.history_shared_since, int) else 0
    direct = is_direct(room_type)
    ack = _ack(delivery, ts)
    return [
        MemberChange(
            ack=ack,
            account=account,
            room_id=event.room_id,
            ts=ts,
            added=True,
            # dm / botDM have no name: named after the counterpart (SYSTEM.md §5)
            room_name=counterpart_of(account, event.accounts, event.requester_account) if direct else event.room_name,
            room_type=room_type,
            site_id=event.site_id,
            joined_at=event.joined_at,
            history_shared_since=hss,
        )
        for account in accounts
    ]


def _removed_parts(delivery: Delivery, event: MemberRemoveEvent, ts: int) -> Parsed:
    accounts = _unique(event.accounts)
    if not accounts:
        return poison(delivery, "member_removed: no accounts")
    ack = _ack(delivery, ts)
    return [MemberChange(ack=ack, account=account, room_id=event.room_id, ts=ts, added=False) for account in accounts]


def _rename_parts(delivery: Delivery, event: RoomRenamedEvent, ts: int) -> Parsed:
    if not event.new_name:
        return poison(delivery, "room_renamed: empty newName")
    return [RoomRename(ack=_ack(delivery, ts), room_id=event.room_id, name=event.new_name, ts=ts)]
