"""Inner events carried as the envelope payload (SYSTEM.md §2.2), with their codecs."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Final, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

from schemas.envelope import EventType, OutboxEvent, encode_go_json
from schemas.errors import decode_or_raise

NonEmptyStr: TypeAlias = Annotated[str, msgspec.Meta(min_length=1)]

# inner `type` of a self-leave; its envelope type is still `member_removed`
MEMBER_LEFT: Final = "member_left"
# `action` of a role change, in the `role_updated` payload and in the subscription notice
ROLE_UPDATED_ACTION: Final = "role_updated"


class RoomType(StrEnum):
    """Known `roomType` values; the wire field stays `str`."""

    CHANNEL = "channel"
    DM = "dm"
    BOT_DM = "botDM"
    DISCUSSION = "discussion"


class MemberAddEvent(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Payload of `member_added`; field order is the Go field order."""

    type: str
    room_id: NonEmptyStr
    room_name: str  # always present, "" for dm / botDM
    room_type: str = ""  # omitted when empty; empty means channel (older publishers)
    accounts: list[NonEmptyStr]
    site_id: str
    requester_account: str = ""
    joined_at: int
    history_shared_since: int | UnsetType = UNSET
    timestamp: int

    def __post_init__(self) -> None:
        """Read a non-positive `historySharedSince` as absent: it is never 0 or negative on the wire."""
        if self.history_shared_since is not UNSET and self.history_shared_since <= 0:
            self.history_shared_since = UNSET


class MemberRemoveEvent(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Payload of `member_removed`; `type` is `member_removed` or `member_left`."""

    type: str
    room_id: NonEmptyStr
    accounts: list[NonEmptyStr]
    site_id: str
    org_id: str = ""  # omitted unless an org was removed
    timestamp: int


class RoleUser(msgspec.Struct, kw_only=True):
    """The `u` object of a role update: only the account is read."""

    account: NonEmptyStr


class RoleSubscription(msgspec.Struct, rename="camel", kw_only=True):
    """The slice of a subscription a `role_updated` consumer reads; other keys are ignored."""

    room_id: NonEmptyStr
    u: RoleUser
    roles: list[str]  # empty roles is the consumer's permanent error, not a decode error


class RoleUpdatedEvent(msgspec.Struct, rename="camel", kw_only=True):
    """Payload of `role_updated` (Go `SubscriptionUpdateEvent`, action `role_updated`)."""

    user_id: str
    subscription: RoleSubscription
    action: str
    timestamp: int


class RoomRenamedEvent(msgspec.Struct, rename="camel", kw_only=True):
    """Payload of `room_renamed`."""

    room_id: NonEmptyStr
    new_name: str
    timestamp: int


class NoticeUser(msgspec.Struct, rename="camel", kw_only=True):
    """The `u` object of a subscription as Go's JSON writes it (`id`, not Mongo's `_id`; `isBot` always)."""

    id: str
    account: str
    is_bot: bool


class NoticeSubscription(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """A subscription as Go's `model.Subscription` JSON carries it (the fields room_worker keeps).

    Times stay integer epoch ms, as everywhere on chatfed's wire (SYSTEM.md §2), where Go writes RFC 3339.
    """

    id: str
    u: NoticeUser
    room_id: str
    site_id: str
    roles: list[str] | None
    name: str
    room_type: str
    is_subscribed: bool = False
    history_shared_since: int | UnsetType = UNSET
    joined_at: int


class SubscriptionUpdateEvent(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Core-NATS notice on `chat.user.{account}.event.subscription.update` (Go `SubscriptionUpdateEvent`)."""

    user_id: str
    subscription: NoticeSubscription
    action: str
    room_name: str = ""
    timestamp: int


InnerEvent: TypeAlias = MemberAddEvent | MemberRemoveEvent | RoleUpdatedEvent | RoomRenamedEvent

MEMBER_ADD_DECODER: Final = msgspec.json.Decoder(MemberAddEvent)
MEMBER_REMOVE_DECODER: Final = msgspec.json.Decoder(MemberRemoveEvent)
ROLE_UPDATED_DECODER: Final = msgspec.json.Decoder(RoleUpdatedEvent)
ROOM_RENAMED_DECODER: Final = msgspec.json.Decoder(RoomRenamedEvent)


def effective_room_type(event: MemberAddEvent) -> str:
    """Return the event's room type, reading an empty one as `channel` (SYSTEM.md §2.2)."""
    return event.room_type or RoomType.CHANNEL.value


def decode_member_added(data: bytes) -> MemberAddEvent:
    """Decode a `member_added` payload; raises `DecodeError`."""
    return decode_or_raise(MEMBER_ADD_DECODER, data, EventType.MEMBER_ADDED.value)


def decode_member_removed(data: bytes) -> MemberRemoveEvent:
    """Decode a `member_removed` payload; raises `DecodeError`."""
    return decode_or_raise(MEMBER_REMOVE_DECODER, data, EventType.MEMBER_REMOVED.value)


def decode_role_updated(data: bytes) -> RoleUpdatedEvent:
    """Decode a `role_updated` payload; raises `DecodeError`."""
    return decode_or_raise(ROLE_UPDATED_DECODER, data, EventType.ROLE_UPDATED.value)


def decode_room_renamed(data: bytes) -> RoomRenamedEvent:
    """Decode a `room_renamed` payload; raises `DecodeError`."""
    return decode_or_raise(ROOM_RENAMED_DECODER, data, EventType.ROOM_RENAMED.value)


def decode_payload(envelope: OutboxEvent) -> InnerEvent | None:
    """Decode the payload by the envelope's `type`; `None` for a type this project does not know.

    Raises:
        DecodeError: the type is known and its payload is invalid.
    """
    decoder = _PAYLOAD_DECODERS.get(envelope.type)
    if decoder is None:
        return None
    return decoder(envelope.payload)


_PAYLOAD_DECODERS: Final[dict[str, Callable[[bytes], InnerEvent]]] = {
    EventType.MEMBER_ADDED.value: decode_member_added,
    EventType.MEMBER_REMOVED.value: decode_member_removed,
    EventType.ROLE_UPDATED.value: decode_role_updated,
    EventType.ROOM_RENAMED.value: decode_room_renamed,
}


def encode_event(event: InnerEvent | SubscriptionUpdateEvent) -> bytes:
    """Encode an inner event to the bytes a Go publisher would produce."""
    return encode_go_json(event)
