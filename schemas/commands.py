"""Room commands read from `ROOMS_{site}` and the result sent back to the requester (SYSTEM.md §2.3)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, TypeAlias

import msgspec

from schemas.envelope import encode_go_json
from schemas.errors import decode_or_raise

NonEmptyStr: TypeAlias = Annotated[str, msgspec.Meta(min_length=1)]
PositiveInt: TypeAlias = Annotated[int, msgspec.Meta(gt=0)]
HistoryMode: TypeAlias = Literal["none", "all"]
Role: TypeAlias = Literal["owner", "member"]


class ErrorCode(StrEnum):
    """`code` of a failed `CommandResult`."""

    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"  # the requester may not do this (docs/DESIGN.md, "Who may do what")
    INTERNAL = "internal"


class ResultStatus(StrEnum):
    """`status` of a `CommandResult`."""

    OK = "ok"
    ERROR = "error"


class Operation(StrEnum):
    """`operation` of a `CommandResult`, as the Go room-worker names them."""

    CREATE = "room.create"
    MEMBER_ADD = "room.member.add"
    MEMBER_REMOVE = "room.member.remove"
    MEMBER_REMOVE_ORG = "room.member.remove_org"
    MEMBER_ROLE_UPDATE = "room.member.role_update"
    RENAME = "room.rename"


class ChannelRef(msgspec.Struct, rename="camel", kw_only=True):
    """A channel whose members are added, as `{roomId, siteId}` (Go `channels[]`)."""

    room_id: NonEmptyStr
    site_id: str = ""


class CreateRoom(msgspec.Struct, rename="camel", kw_only=True):
    """Body of `chat.room.canonical.{site}.create`."""

    name: str = ""
    users: list[NonEmptyStr] = msgspec.field(default_factory=list)
    orgs: list[NonEmptyStr] = msgspec.field(default_factory=list)
    channels: list[ChannelRef] = msgspec.field(default_factory=list)
    room_id: NonEmptyStr
    requester_id: str = ""
    requester_account: NonEmptyStr
    # acceptance time (ms): joinedAt and dedup seeds derive from it, so it is required and > 0
    timestamp: PositiveInt


class History(msgspec.Struct, kw_only=True):
    """How much history new members see: `none` restricts it to their join time."""

    mode: HistoryMode = "all"


class AddMembers(msgspec.Struct, rename="camel", kw_only=True):
    """Body of `chat.room.canonical.{site}.member.add`."""

    room_id: NonEmptyStr
    users: list[NonEmptyStr] = msgspec.field(default_factory=list)
    orgs: list[NonEmptyStr] = msgspec.field(default_factory=list)
    channels: list[ChannelRef] = msgspec.field(default_factory=list)
    history: History = msgspec.field(default_factory=History)
    requester_id: str = ""
    requester_account: NonEmptyStr
    timestamp: PositiveInt


class RemoveMember(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Body of `chat.room.canonical.{site}.member.remove`: exactly one of `account` / `org_id`."""

    room_id: NonEmptyStr
    requester: NonEmptyStr
    account: str = ""
    org_id: str = ""
    timestamp: PositiveInt
    room_type: str = ""  # sent by the Go room-service; non-channel is a bad request

    def __post_init__(self) -> None:
        """Reject zero or two targets; on decode msgspec turns the ValueError into a ValidationError."""
        if bool(self.account) == bool(self.org_id):
            msg = "exactly one of `account` and `orgId` must be set"
            raise ValueError(msg)


class UpdateRole(msgspec.Struct, rename="camel", kw_only=True):
    """Body of `chat.room.canonical.{site}.member.role-update` (Go `UpdateRoleRequest` plus the requester)."""

    room_id: NonEmptyStr
    account: NonEmptyStr
    new_role: Role
    requester_id: str = ""
    requester_account: NonEmptyStr
    timestamp: PositiveInt


class RenameRoom(msgspec.Struct, rename="camel", kw_only=True):
    """Body of `chat.room.canonical.{site}.rename`."""

    room_id: NonEmptyStr
    new_name: str  # the channel-name rule (plans.channel_name_problem) is checked when carried out
    requester_id: str = ""
    requester_account: NonEmptyStr
    timestamp: PositiveInt


class CommandResult(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Result published to `chat.user.{account}.response.{requestId}`."""

    request_id: str
    operation: str
    status: str
    room_id: str = ""
    error: str = ""
    code: str = ""
    timestamp: int


RoomCommand: TypeAlias = CreateRoom | AddMembers | RemoveMember | UpdateRole | RenameRoom

CREATE_ROOM_DECODER: Final = msgspec.json.Decoder(CreateRoom)
ADD_MEMBERS_DECODER: Final = msgspec.json.Decoder(AddMembers)
REMOVE_MEMBER_DECODER: Final = msgspec.json.Decoder(RemoveMember)
UPDATE_ROLE_DECODER: Final = msgspec.json.Decoder(UpdateRole)
RENAME_ROOM_DECODER: Final = msgspec.json.Decoder(RenameRoom)
COMMAND_RESULT_DECODER: Final = msgspec.json.Decoder(CommandResult)


def decode_create_room(data: bytes) -> CreateRoom:
    """Decode a create-room command; raises `DecodeError`."""
    return decode_or_raise(CREATE_ROOM_DECODER, data, "create_room")


def decode_add_members(data: bytes) -> AddMembers:
    """Decode an add-members command; raises `DecodeError`."""
    return decode_or_raise(ADD_MEMBERS_DECODER, data, "add_members")


def decode_remove_member(data: bytes) -> RemoveMember:
    """Decode a remove-member command; raises `DecodeError` (also when not exactly one target)."""
    return decode_or_raise(REMOVE_MEMBER_DECODER, data, "remove_member")


def decode_update_role(data: bytes) -> UpdateRole:
    """Decode a role-update command; raises `DecodeError` (also for a role other than owner / member)."""
    return decode_or_raise(UPDATE_ROLE_DECODER, data, "update_role")


def decode_rename_room(data: bytes) -> RenameRoom:
    """Decode a rename command; raises `DecodeError`."""
    return decode_or_raise(RENAME_ROOM_DECODER, data, "rename_room")


def decode_command_result(data: bytes) -> CommandResult:
    """Decode a command result; raises `DecodeError`."""
    return decode_or_raise(COMMAND_RESULT_DECODER, data, "command_result")


def encode_command(command: RoomCommand | CommandResult) -> bytes:
    """Encode a command or a result as Go would."""
    return encode_go_json(command)
