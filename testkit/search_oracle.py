"""Test helpers for search_sync: build deliveries, an in-memory view store driven by the pure plan, and the timestamp-order oracle."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from connectors.operators import PartOutcome
from dataflows.search_sync import views as views
from dataflows.search_sync.parts import MemberChange, RoomRename
from dataflows.search_sync.views import RoomName, SpotlightBody
from schemas.carriers import Delivery
from schemas.documents import UserRoomDoc, spotlight_doc_id
from schemas.envelope import OutboxEvent, encode_envelope
from schemas.events import (
    MemberAddEvent,
    MemberRemoveEvent,
    RoomRenamedEvent,
    encode_event,
)


def delivery(data: bytes, seq: int = 1, subject: str = "chat.inbox.s1.member_added") -> Delivery:
    return Delivery(subject=subject, data=data, reply=f"$JS.ACK.INBOX_s1.search-sync.1.{seq}.{seq}.0.0", stream="INBOX_s1", stream_seq=seq, num_delivered=1)


def envelope(event_type: str, inner: msgspec.Struct, ts: int, site: str = "s1") -> bytes:
    payload = encode_event(inner)  # type: ignore[arg-type]
    return encode_envelope(OutboxEvent(type=event_type, site_id=site, dest_site_id=site, payload=payload, timestamp=ts))


def added(
    room: str,
    accounts: list[str],
    ts: int,
    *,
    name: str = "",
    room_type: str = "channel",
    hss: int = 0,
    requester: str = "",
    joined_at: int | None = None,
) -> bytes:
    event = MemberAddEvent(
        type="member_added",
        room_id=room,
        room_name=name or f"name of {room}",
        room_type=room_type,
        accounts=accounts,
        site_id="s1",
        requester_account=requester,
        joined_at=ts - 1 if joined_at is None else joined_at,
        timestamp=ts,
    )
    if hss:
        event.history_shared_since = hss
    return envelope("member_added", event, ts)


def removed(room: str, accounts: list[str], ts: int) -> bytes:
    return envelope("member_removed", MemberRemoveEvent(type="member_removed", room_id=room, accounts=accounts, site_id="s1", timestamp=ts), ts)


def renamed(room: str, name: str, ts: int) -> bytes:
    return envelope("room_renamed", RoomRenamedEvent(room_id=room, new_name=name, timestamp=ts), ts)


class MemoryViews:
    """The views kept in dicts and written through the same pure plan the Elasticsearch writer uses."""

    def __init__(self) -> None:
        self.user_rooms: dict[str, UserRoomDoc] = {}
        self.spotlight: dict[str, SpotlightBody] = {}
        self.names: dict[str, RoomName] = {}
        self.user_room_writes = 0
        self.fail_accounts: set[str] = set()

    def write(self, batch: list[tuple[str, list[object]]]) -> list[PartOutcome]:
        outcomes: list[PartOutcome] = []
        for key, items in batch:
            ok = key not in self.fail_accounts
            changes = [item for item in items if isinstance(item, MemberChange)]
            if changes and ok:
                self.apply(key, changes)
            for item in items:
                if isinstance(item, RoomRename) and ok:
                    self.rename(item)
                assert isinstance(item, (MemberChange, RoomRename))
                outcomes.append(PartOutcome(ack=item.ack, ok=ok, reason="" if ok else "down"))
        return outcomes

    def apply(self, account: str, changes: Sequence[MemberChange]) -> None:
        plan = views.plan_account(account, changes, self.user_rooms.get(account), self.spotlight, self.names)
        if plan.user_room is not None:
            self.user_rooms[account] = plan.user_room
            self.user_room_writes += 1
        for doc in plan.upserts:
            self.spotlight[spotlight_doc_id(account=account, room_id=doc.room_id)] = doc
        for doc_id in plan.deletes:
            del self.spotlight[doc_id]

    def rename(self, rename: RoomRename) -> None:
        name = views.newest_name(self.names.get(rename.room_id), [rename])
        assert name is not None
        self.names[rename.room_id] = name
        for doc_id, doc in list(self.spotlight.items()):
            if doc.room_id == rename.room_id and (updated := views.renamed(doc, name)) is not None:
                self.spotlight[doc_id] = updated


class Event(msgspec.Struct, frozen=True):
    """One generated membership event of a history; an add's `joined` / `name` default to `ts - 1` / `name of {room}`."""

    account: str
    room: str
    ts: int
    added: bool
    hss: int = 0
    joined: int = 0
    name: str = ""

    @property
    def joined_at(self) -> int:
        return self.joined or self.ts - 1

    @property
    def room_name(self) -> str:
        return self.name or f"name of {self.room}"


def oracle(events: Iterable[Event]) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
    """The views after each (account, room)'s events applied one by one in timestamp order.

    A removal ends the membership; an add creates it if there is none and otherwise leaves it as it is,
    except for the room name, which follows the newest add. Returns per account rooms / restrictedRooms /
    roomTimestamps, and spotlight ids -> {roomName, joinedAt}.
    """
    history: dict[tuple[str, str], list[Event]] = {}
    for event in sorted(set(events), key=lambda e: e.ts):
        history.setdefault((event.account, event.room), []).append(event)
    user_rooms: dict[str, dict[str, object]] = {}
    spotlight: dict[str, dict[str, object]] = {}
    for (account, room), ordered in sorted(history.items()):
        shaper: Event | None = None
        name = ""
        for event in ordered:
            if not event.added:
                shaper = None
            elif shaper is None:
                shaper, name = event, event.room_name
            else:
                name = event.room_name
        doc = user_rooms.setdefault(account, {"rooms": [], "restrictedRooms": {}, "roomTimestamps": {}})
        doc["roomTimestamps"][room] = ordered[-1].ts  # type: ignore[index]
        if shaper is None:
            continue
        if shaper.hss:
            doc["restrictedRooms"][room] = shaper.hss  # type: ignore[index]
        else:
            doc["rooms"].append(room)  # type: ignore[attr-defined]
        spotlight[f"{account}_{room}"] = {"roomName": name, "joinedAt": shaper.joined_at}
    return user_rooms, spotlight


def event_bytes(event: Event) -> bytes:
    if event.added:
        return added(event.room, [event.account], event.ts, hss=event.hss, name=event.room_name, joined_at=event.joined_at)
    return removed(event.room, [event.account], event.ts)
