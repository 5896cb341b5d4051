"""search_sync's rules: the user-room and spotlight documents that a document's parts (parts.py) lead to.

Membership rule (SYSTEM.md §5, "the state after applying events in timestamp order"): per (account, room),
a removal ends the membership and an add to an existing membership leaves it as it is, so the membership
is shaped by the OLDEST `member_added` newer than the last `member_removed`: that add decides `joinedAt`,
`roomType` and `siteId` of the spotlight document and the user-room placement (`rooms`, or
`restrictedRooms` with its `historySharedSince`). Newer adds change no shape; they only advance
`roomTimestamps` (still the newest event's timestamp, a tombstone after a removal) and may carry a newer
`roomName` (the name follows the newest add or rename). An add at or before the last removal is a no-op.
Because a late add may be older than the shaping one, and a late removal may fall between two adds,
user-room keeps one extra map, `roomJoins` (stored, not indexed): per member room, the last removal's
timestamp and every add since, oldest first. The usual membership (one add, no removal before it) has
no entry: its add is the one at `roomTimestamps[rid]`, its shape is in its spotlight document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import msgspec

from dataflows.search_sync.parts import MemberChange, RoomRename
from schemas.documents import SpotlightDoc, UserRoomDoc, spotlight_doc_id
from schemas.membership import is_direct


class SpotlightBody(SpotlightDoc, kw_only=True):
    """The stored spotlight document: the contract's fields plus `nameTs`, the clock of `roomName`."""

    name_ts: int = 0


class Join(msgspec.Struct, frozen=True, array_like=True):
    """One `member_added` of a current membership: what it shapes if it is the oldest one (`roomJoins`)."""

    ts: int
    joined_at: int
    history_shared_since: int
    room_type: str  # "": shape unknown here (see `_membership_of`)
    site_id: str


class Membership(msgspec.Struct, frozen=True, array_like=True):
    """A member room's `roomJoins` entry: the last removal's timestamp (0: none) and the adds since, oldest first."""

    since: int
    adds: tuple[Join, ...]

    @property
    def shaper(self) -> Join:
        return self.adds[0]


class UserRoomBody(UserRoomDoc, kw_only=True):
    """The stored user-room document: the contract's fields plus `roomJoins` (membership history, not indexed)."""

    room_joins: dict[str, Membership] = msgspec.field(default_factory=dict)


class RoomName(msgspec.Struct, rename="camel", kw_only=True):
    """`room-names` index body, `_id = roomId`: the newest name a rename gave the room."""

    room_id: str
    name: str
    name_ts: int


class AccountPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The writes one account's changes need; `user_room` is None when the stored document is current."""

    user_room: UserRoomBody | None
    upserts: list[SpotlightBody]
    deletes: list[str]


def _join(change: MemberChange) -> Join:
    return Join(ts=change.ts, joined_at=change.joined_at, history_shared_since=change.history_shared_since, room_type=change.room_type, site_id=change.site_id)


def _membership_of(stored: UserRoomDoc | None, room_id: str, shown: SpotlightBody | None) -> tuple[int, dict[int, Join]]:
    """(last removal's timestamp, adds since by timestamp) as stored for `room_id`.

    A member room without a `roomJoins` entry (the usual case, kept out to keep the document small) has
    one add, at its stamp, and no removal before it; its shape is the one its spotlight document `shown` shows.
    """
    if stored is None or room_id not in stored.room_timestamps:
        return 0, {}
    stamp = stored.room_timestamps[room_id]
    joins = stored.room_joins if isinstance(stored, UserRoomBody) else {}
    if room_id in joins:
        membership = joins[room_id]
        return membership.since, {join.ts: join for join in membership.adds}
    if not is_member(stored, room_id):
        return stamp, {}  # the newest event was a removal: its timestamp is the tombstone
    hss = stored.restricted_rooms.get(room_id, 0)
    if shown is None:  # shape unknown here (a spotlight write that failed): the add's redelivery brings it
        return 0, {stamp: Join(ts=stamp, joined_at=0, history_shared_since=hss, room_type="", site_id="")}
    return 0, {stamp: Join(ts=stamp, joined_at=shown.joined_at, history_shared_since=hss, room_type=shown.room_type, site_id=shown.site_id)}


def _with_add(adds: dict[int, Join], join: Join) -> None:
    known = adds.get(join.ts)
    if known is None or not known.room_type:
        adds[join.ts] = join
    else:  # a redelivery; two different adds at one instant: keep one, whatever the order
        adds[join.ts] = min(known, join, key=msgspec.structs.astuple)


def apply_to_user_room(
    stored: UserRoomDoc | None,
    account: str,
    changes: Iterable[MemberChange],
    shown: Mapping[str, SpotlightBody | None] | None = None,
) -> UserRoomBody:
    """The user-room document after `changes`, by the membership rule of this module's docstring."""
    return _apply(stored, account, changes, shown or {})[0]


def _apply(
    stored: UserRoomDoc | None,
    account: str,
    changes: Iterable[MemberChange],
    shown: Mapping[str, SpotlightBody | None],
) -> tuple[UserRoomBody, dict[str, Membership]]:
    """The user-room document after `changes`, and the membership of each room they touch that remains one.

    `roomTimestamps[rid]` is the newest event's timestamp (a tombstone after a removal); an add at or
    before the last removal is a no-op. `shown` maps a room to its stored spotlight document (the shape of
    a membership without a `roomJoins` entry). `createdAt` / `updatedAt` are the earliest / latest event
    timestamps seen for the account, so the document does not depend on the order events arrived in
    (replays, several processes).
    """
    rooms = set(stored.rooms) if stored else set()
    restricted = dict(stored.restricted_rooms) if stored else {}
    stamps = dict(stored.room_timestamps) if stored else {}
    joins = dict(stored.room_joins) if isinstance(stored, UserRoomBody) else {}
    created = stored.created_at if stored else None
    updated = stored.updated_at if stored else 0
    by_room: dict[str, list[MemberChange]] = {}
    for change in changes:
        created = change.ts if created is None else min(created, change.ts)
        updated = max(updated, change.ts)
        by_room.setdefault(change.room_id, []).append(change)
    touched: dict[str, Membership] = {}
    for room_id, room_changes in by_room.items():
        since, adds = _membership_of(stored, room_id, shown.get(spotlight_doc_id(account=account, room_id=room_id)))
        stamp = stamps.get(room_id, 0)
        for change in room_changes:
            stamp = max(stamp, change.ts)
            if change.ts <= since:
                continue  # at or before the last removal: SYSTEM.md §5
            if change.added:
                _with_add(adds, _join(change))
            else:
                since = change.ts
                adds = {ts: join for ts, join in adds.items() if ts > since}
        stamps[room_id] = stamp
        rooms.discard(room_id)
        restricted.pop(room_id, None)
        joins.pop(room_id, None)
        if not adds:
            continue
        membership = Membership(since=since, adds=tuple(adds[ts] for ts in sorted(adds)))
        touched[room_id] = membership
        if since or len(adds) > 1:  # the usual membership (one add, no removal before) needs no entry
            joins[room_id] = membership
        if membership.shaper.history_shared_since > 0:
            restricted[room_id] = membership.shaper.history_shared_since
        else:
            rooms.add(room_id)
    doc = UserRoomBody(
        user_account=account,
        rooms=sorted(rooms),
        restricted_rooms=restricted,
        room_timestamps=stamps,
        created_at=created if created is not None else updated,
        updated_at=updated,
        room_joins=joins,
    )
    return doc, touched


def is_member(doc: UserRoomDoc, room_id: str) -> bool:
    """Whether the user-room document grants `room_id` (fully or restricted)."""
    return room_id in doc.restricted_rooms or room_id in doc.rooms


def spotlight_body(
    account: str,
    room_id: str,
    membership: Membership,
    named_by: Iterable[MemberChange],
    current: SpotlightBody | None,
    known_name: RoomName | None,
) -> SpotlightBody | None:
    """The spotlight document of a membership: shaped by its oldest add, named by the newest add or rename.

    `named_by` are this membership's adds at hand; `current` the stored document (its name may be the newest).
    None when nothing at hand names the room (an earlier, acknowledged message wrote the document).
    """
    shaper = membership.shaper
    if not shaper.room_type:  # shape unknown: keep the stored document's
        if current is None:
            return None
        shaper = Join(ts=shaper.ts, joined_at=current.joined_at, history_shared_since=0, room_type=current.room_type, site_id=current.site_id)
    best: tuple[int, str] | None = None
    for change in named_by:  # the newest; at one instant, the smallest name (whatever the order)
        if best is None or (change.ts, best[1]) > (best[0], change.room_name):
            best = (change.ts, change.room_name)
    if current is not None and (best is None or current.name_ts > best[0]):
        best = (current.name_ts, current.room_name)
    if known_name is not None and not is_direct(shaper.room_type) and (best is None or known_name.name_ts > best[0]):
        best = (known_name.name_ts, known_name.name)
    if best is None:
        return None
    return SpotlightBody(
        user_account=account,
        room_id=room_id,
        room_name=best[1],
        room_type=shaper.room_type,
        site_id=shaper.site_id,
        joined_at=shaper.joined_at,
        name_ts=best[0],
    )


def plan_account(
    account: str,
    changes: Sequence[MemberChange],
    stored: UserRoomDoc | None,
    spotlight: Mapping[str, SpotlightBody | None],
    names: Mapping[str, RoomName],
) -> AccountPlan:
    """Writes for one account: its user-room document, then spotlight derived from that document's final state.

    A room's spotlight document follows the final membership (its shaping add, its newest name) and is
    deleted whenever the final state says "not a member": a stale add can never resurrect a removal,
    however late it comes, without relying on Elasticsearch's expiring delete tombstones.
    """
    final, memberships = _apply(stored, account, changes, spotlight)
    upserts: list[SpotlightBody] = []
    deletes: list[str] = []
    adds: dict[str, list[MemberChange]] = {}
    for change in changes:
        if change.added:
            adds.setdefault(change.room_id, []).append(change)
    for room_id in sorted({change.room_id for change in changes}):
        doc_id = spotlight_doc_id(account=account, room_id=room_id)
        current = spotlight.get(doc_id)
        membership = memberships.get(room_id)
        if membership is None:
            if current is not None:
                deletes.append(doc_id)
            continue
        named_by = [c for c in adds.get(room_id, ()) if c.ts > membership.since]
        desired = spotlight_body(account, room_id, membership, named_by, current, names.get(room_id))
        if desired is not None and desired != current:
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
