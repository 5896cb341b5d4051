"""Per-event logic of search_sync: INBOX deliveries to per-account changes, and the user-room / spotlight documents they lead to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Final, TypeAlias, TypeGuard

import msgspec

from logic.identifiers import identifier_problem
from logic.membership import counterpart_of, is_direct
from logic.origin import origin_problem
from schemas.carriers import Delivery, Settle, poison
from schemas.documents import SpotlightDoc, UserRoomDoc, spotlight_doc_id
from schemas.envelope import EventType, decode_envelope
from schemas.errors import DecodeError
from schemas.subjects import parse_inbox
from schemas.events import (
    MemberAddEvent,
    MemberRemoveEvent,
    RoomRenamedEvent,
    decode_member_added,
    decode_member_removed,
    decode_room_renamed,
    effective_room_type,
)

# a rename is keyed by room; whitespace can never occur in an account (a subject token)
RENAME_KEY_PREFIX: Final = "room "


class MemberChange(msgspec.Struct, frozen=True, kw_only=True):
    """One account's share of a `member_added` / `member_removed` message (one part of `parts`)."""

    delivery: Delivery
    parts: int
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

    delivery: Delivery
    parts: int
    room_id: str
    name: str
    ts: int


Part: TypeAlias = MemberChange | RoomRename
Parsed: TypeAlias = list[Part] | Settle


class SpotlightBody(SpotlightDoc, kw_only=True):
    """The stored spotlight document: the contract's fields plus `nameTs`, the clock of `roomName`."""

    name_ts: int = 0


class RoomName(msgspec.Struct, rename="camel", kw_only=True):
    """`room-names` index body, `_id = roomId`: the newest name a rename gave the room."""

    room_id: str
    name: str
    name_ts: int


class AccountPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The writes one account's changes need; `user_room` is None when the stored document is current."""

    user_room: UserRoomDoc | None
    upserts: list[SpotlightBody]
    deletes: list[str]


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
    return [
        MemberChange(
            delivery=delivery,
            parts=len(accounts),
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
    return [
        MemberChange(delivery=delivery, parts=len(accounts), account=account, room_id=event.room_id, ts=ts, added=False)
        for account in accounts
    ]


def _rename_parts(delivery: Delivery, event: RoomRenamedEvent, ts: int) -> Parsed:
    if not event.new_name:
        return poison(delivery, "room_renamed: empty newName")
    return [RoomRename(delivery=delivery, parts=1, room_id=event.room_id, name=event.new_name, ts=ts)]


def apply_to_user_room(stored: UserRoomDoc | None, account: str, changes: Iterable[MemberChange]) -> UserRoomDoc:
    """The user-room document after `changes`, last write wins per room by `roomTimestamps` (kept as tombstones).

    `createdAt` / `updatedAt` are the earliest / latest event timestamps seen for the account, so the
    document does not depend on the order events arrived in (replays, several processes).
    """
    rooms = set(stored.rooms) if stored else set()
    restricted = dict(stored.restricted_rooms) if stored else {}
    stamps = dict(stored.room_timestamps) if stored else {}
    created = stored.created_at if stored else None
    updated = stored.updated_at if stored else 0
    for change in sorted(changes, key=lambda c: c.ts):
        created = change.ts if created is None else min(created, change.ts)
        updated = max(updated, change.ts)
        if change.ts <= stamps.get(change.room_id, 0):
            continue  # stale or duplicate: SYSTEM.md §5
        stamps[change.room_id] = change.ts
        rooms.discard(change.room_id)
        restricted.pop(change.room_id, None)
        if change.added and change.history_shared_since > 0:
            restricted[change.room_id] = change.history_shared_since
        elif change.added:
            rooms.add(change.room_id)
    return UserRoomDoc(
        user_account=account,
        rooms=sorted(rooms),
        restricted_rooms=restricted,
        room_timestamps=stamps,
        created_at=created if created is not None else updated,
        updated_at=updated,
    )


def is_member(doc: UserRoomDoc, room_id: str) -> bool:
    """Whether the user-room document grants `room_id` (fully or restricted)."""
    return room_id in doc.restricted_rooms or room_id in doc.rooms


def spotlight_body(change: MemberChange, known_name: RoomName | None) -> SpotlightBody:
    """The spotlight document an applied add leads to; a newer rename's name beats the event's."""
    name, name_ts = change.room_name, change.ts
    if known_name is not None and not is_direct(change.room_type) and known_name.name_ts > name_ts:
        name, name_ts = known_name.name, known_name.name_ts
    return SpotlightBody(
        user_account=change.account,
        room_id=change.room_id,
        room_name=name,
        room_type=change.room_type,
        site_id=change.site_id,
        joined_at=change.joined_at,
        name_ts=name_ts,
    )


def plan_account(
    account: str,
    changes: Sequence[MemberChange],
    stored: UserRoomDoc | None,
    spotlight: Mapping[str, SpotlightBody | None],
    names: Mapping[str, RoomName],
) -> AccountPlan:
    """Writes for one account: its user-room document, then spotlight derived from that document's final state.

    A room's spotlight document is written only by the change whose timestamp the final state holds,
    and deleted whenever the final state says "not a member": a stale add can never resurrect a
    removal, however late it comes, without relying on Elasticsearch's expiring delete tombstones.
    """
    final = apply_to_user_room(stored, account, changes)
    upserts: list[SpotlightBody] = []
    deletes: list[str] = []
    for room_id in sorted({change.room_id for change in changes}):
        doc_id = spotlight_doc_id(account=account, room_id=room_id)
        current = spotlight.get(doc_id)
        if not is_member(final, room_id):
            if current is not None:
                deletes.append(doc_id)
            continue
        stamp = final.room_timestamps[room_id]
        winner = next((c for c in changes if c.room_id == room_id and c.added and c.ts == stamp), None)
        if winner is None:
            continue  # an earlier, already acknowledged message wrote this room's document
        desired = spotlight_body(winner, names.get(room_id))
        if desired != current:
            upserts.append(desired)
    return AccountPlan(user_room=None if final == stored else final, upserts=upserts, deletes=deletes)


def newest_name(stored: RoomName | None, renames: Iterable[RoomRename]) -> RoomName | None:
    """The room's name after `renames` (last write wins by timestamp); None if there is nothing at all."""
    best = stored
    for rename in renames:
        if best is None or rename.ts > best.name_ts:
            best = RoomName(room_id=rename.room_id, name=rename.name, name_ts=rename.ts)
    return best


def renamed(doc: SpotlightBody, name: RoomName) -> SpotlightBody | None:
    """`doc` carrying the room's newer name, or None when the rename does not apply (older, or dm / botDM)."""
    if is_direct(doc.room_type) or name.name_ts <= doc.name_ts:
        return None
    return msgspec.structs.replace(doc, room_name=name.name, name_ts=name.name_ts)


class ItemOutcome(StrEnum):
    """What one bulk item's result means to the writer."""

    DONE = "done"
    CONFLICT = "conflict"  # another write got there first: re-read and re-apply
    RETRY = "retry"  # transient (429, 5xx): nak the message, redeliver later
    FATAL = "fatal"  # our own fault (mapping, missing alias): stop loudly


def classify_bulk_item(action: str, status: int, error_type: str) -> ItemOutcome:
    """Classify one bulk item by its action (`index`, `create`, `delete`), HTTP status and error type."""
    if 200 <= status < 300:
        return ItemOutcome.DONE
    if action == "delete" and status == 404 and not error_type:
        return ItemOutcome.DONE  # already absent
    if status == 409:
        return ItemOutcome.CONFLICT
    if status == 429 or status >= 500:
        return ItemOutcome.RETRY
    return ItemOutcome.FATAL
