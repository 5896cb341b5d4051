"""MongoDB documents and Elasticsearch bodies; timestamps are epoch milliseconds."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from schemas.errors import DecodeError

T = TypeVar("T", bound=msgspec.Struct)


class MemberType(StrEnum):
    """`room_members.member.type` values."""

    INDIVIDUAL = "individual"
    ORG = "org"


class Room(msgspec.Struct, rename="camel", kw_only=True):
    """A `rooms` document; exists only on the room's home site."""

    id: str = msgspec.field(name="_id")
    name: str  # "" for dm / botDM
    type: str
    site_id: str
    created_at: int
    updated_at: int
    user_count: int = 0
    app_count: int = 0
    # the acceptance time of the rename that gave `name`: an older rename changes nothing (SYSTEM.md §3)
    name_updated_at: int | UnsetType = UNSET


class SubscriptionUser(msgspec.Struct, rename="camel", kw_only=True):
    """The `u` object of a subscription."""

    id: str = msgspec.field(name="_id")
    account: str
    is_bot: bool = False


class Subscription(msgspec.Struct, rename="camel", kw_only=True):
    """A `subscriptions` document, unique on `(roomId, u.account)`."""

    id: str = msgspec.field(name="_id")  # uuid7, 32 lowercase hex
    u: SubscriptionUser
    room_id: str
    site_id: str  # the room's home site
    room_type: str
    name: str
    roles: list[str] | None  # null for dm / botDM
    is_subscribed: bool = False
    joined_at: int
    history_shared_since: int | UnsetType = UNSET
    # guards written by updates, never on insert (SYSTEM.md §4)
    roles_updated_at: int | UnsetType = UNSET
    name_updated_at: int | UnsetType = UNSET


class User(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """A `users` document (local and remote users); unknown fields are ignored."""

    id: str = msgspec.field(name="_id")
    account: str
    site_id: str
    sect_id: str = ""
    sect_name: str = ""
    dept_id: str = ""
    dept_name: str = ""
    eng_name: str = ""
    chinese_name: str = ""
    name: str = ""


class RoomMemberRef(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Who a `room_members` row is about: a user `_id` (individual) or an org id."""

    id: str
    type: str
    account: str = ""  # individuals only


class RoomMember(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A `room_members` row, unique on `(rid, member.type, member.id)`; home site only."""

    id: str = msgspec.field(name="_id")
    rid: str
    ts: int
    member: RoomMemberRef


class UserRoomDoc(msgspec.Struct, rename="camel", kw_only=True):
    """`user-room` index body, `_id = userAccount` (SYSTEM.md §5)."""

    user_account: str
    rooms: list[str] = msgspec.field(default_factory=list)
    restricted_rooms: dict[str, int] = msgspec.field(default_factory=dict)
    room_timestamps: dict[str, int] = msgspec.field(default_factory=dict)
    created_at: int
    updated_at: int


class SpotlightDoc(msgspec.Struct, rename="camel", kw_only=True):
    """`spotlight` index body, `_id = "{userAccount}_{roomId}"`."""

    user_account: str
    room_id: str
    room_name: str
    room_type: str
    site_id: str
    joined_at: int


def spotlight_doc_id(*, account: str, room_id: str) -> str:
    """Return the spotlight document id of `(account, room)`."""
    return f"{account}_{room_id}"


def to_mongo(doc: msgspec.Struct) -> dict[str, object]:
    """Return `doc` as a plain dict with its wire keys (Mongo document or ES body)."""
    raw = msgspec.to_builtins(doc)
    if not isinstance(raw, dict):  # pragma: no cover - a Struct always gives a dict
        msg = f"{type(doc).__name__} does not encode to an object"
        raise TypeError(msg)
    return raw


def from_mongo(doc_type: type[T], raw: Mapping[str, object]) -> T:
    """Convert a Mongo document or ES `_source` into `doc_type`; raises `DecodeError`."""
    try:
        return msgspec.convert(raw if isinstance(raw, dict) else dict(raw), doc_type)
    except msgspec.ValidationError as exc:
        msg = f"{doc_type.__name__}: {exc}"
        raise DecodeError(msg) from exc
