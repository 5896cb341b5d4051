"""search_sync's views folded in memory from a stream's parts, by the flow's own rules (views.py), for `chatfed rebuild`.

The fold applies chunk after chunk of parts (parts.py) to dict copies of the three views exactly as the guarded
writer would (the same `plan_account`, `newest_name`, `renamed`), so the result does not depend on the chunking.
`take` hands back what changed since the previous `take`, as plain index / delete operations: the rebuild writes
them to indexes nobody else writes yet, so no guard is needed. Renames are swept over the room's spotlight
documents once per `take` rather than per rename (the sweep is idempotent: it only moves a name forward).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from dataflows.search_sync import views
from dataflows.search_sync.parts import MemberChange, Part, RoomRename
from dataflows.search_sync.views import RoomName, SpotlightBody, UserRoomBody
from schemas.documents import spotlight_doc_id


class Changes(msgspec.Struct, frozen=True, kw_only=True):
    """What changed since the previous `take`: documents to (re)write and spotlight ids to delete."""

    user_rooms: dict[str, UserRoomBody]
    spotlight: dict[str, SpotlightBody]
    spotlight_deletes: list[str]
    names: dict[str, RoomName]

    @property
    def count(self) -> int:
        return len(self.user_rooms) + len(self.spotlight) + len(self.spotlight_deletes) + len(self.names)


class ViewsFold:
    """The user-room, spotlight and room-names documents after every part applied so far."""

    def __init__(self) -> None:
        self.user_rooms: dict[str, UserRoomBody] = {}
        self.spotlight: dict[str, SpotlightBody] = {}
        self.names: dict[str, RoomName] = {}
        self._dirty_accounts: set[str] = set()
        self._dirty_spotlight: set[str] = set()
        self._deleted: set[str] = set()
        self._renamed_rooms: set[str] = set()
        self._taken_once = False

    def apply(self, parts: Iterable[Part]) -> None:
        """Fold one chunk of parts in (any order, duplicates included: the rules are order-independent)."""
        members: dict[str, list[MemberChange]] = {}
        for part in parts:
            if isinstance(part, MemberChange):
                members.setdefault(part.account, []).append(part)
            elif isinstance(part, RoomRename):
                name = views.newest_name(self.names.get(part.room_id), [part])
                if name is not None and name != self.names.get(part.room_id):
                    self.names[part.room_id] = name
                    self._renamed_rooms.add(part.room_id)
            else:
                raise TypeError(f"unexpected part {type(part).__name__}")
        for account, changes in members.items():
            plan = views.plan_account(account, changes, self.user_rooms.get(account), self.spotlight, self.names)
            if plan.user_room is not None:
                self.user_rooms[account] = plan.user_room
                self._dirty_accounts.add(account)
            for doc in plan.upserts:
                doc_id = spotlight_doc_id(account=account, room_id=doc.room_id)
                self.spotlight[doc_id] = doc
                self._dirty_spotlight.add(doc_id)
                self._deleted.discard(doc_id)
            for doc_id in plan.deletes:
                del self.spotlight[doc_id]
                self._dirty_spotlight.discard(doc_id)
                self._deleted.add(doc_id)

    def _sweep_renames(self) -> None:
        if not self._renamed_rooms:
            return
        rooms, self._renamed_rooms = self._renamed_rooms, set()
        for doc_id, doc in self.spotlight.items():
            if doc.room_id in rooms and (updated := views.renamed(doc, self.names[doc.room_id])) is not None:
                self.spotlight[doc_id] = updated
                self._dirty_spotlight.add(doc_id)

    def take(self) -> Changes:
        """The documents changed since the previous `take` (deletes only of documents a previous take could have written)."""
        rooms = set(self._renamed_rooms)
        self._sweep_renames()
        changes = Changes(
            user_rooms={account: self.user_rooms[account] for account in self._dirty_accounts},
            spotlight={doc_id: self.spotlight[doc_id] for doc_id in self._dirty_spotlight},
            spotlight_deletes=sorted(self._deleted) if self._taken_once else [],
            names={room_id: self.names[room_id] for room_id in rooms},
        )
        self._dirty_accounts, self._dirty_spotlight, self._deleted = set(), set(), set()
        self._taken_once = True
        return changes
