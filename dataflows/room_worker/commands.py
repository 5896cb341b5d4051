"""Room commands, purely: decode a delivery from `ROOMS_{site}` and shape the requester's result (SYSTEM.md §2.3)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeAlias, TypeGuard

import msgspec

from dataflows.room_worker.plans import Failure, NewId
from schemas import subjects
from schemas.carriers import Delivery, Settle
from schemas.commands import (
    AddMembers,
    CommandResult,
    CreateRoom,
    ErrorCode,
    Operation,
    RemoveMember,
    RenameRoom,
    ResultStatus,
    RoomCommand,
    UpdateRole,
    decode_add_members,
    decode_create_room,
    decode_remove_member,
    decode_rename_room,
    decode_update_role,
)
from schemas.errors import DecodeError
from schemas.names import identifier_problem, is_valid_token
from schemas.subjects import RoomOp

REQUEST_ID_HEADER: Final = "X-Request-ID"


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded command; `dedup_base` is the header request id, or the payload seed without one (§2.4)."""

    delivery: Delivery
    op: RoomOp
    body: RoomCommand
    request_id: str  # where the result goes; minted when the header is missing or malformed
    dedup_base: str

    @property
    def room_id(self) -> str:
        """The room this command touches: commands of one room are applied one at a time."""
        return self.body.room_id


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery that is not carried out: dead-lettered with `reason` (or acked when `ignored`)."""

    delivery: Delivery
    reason: str
    ignored: bool = False  # an unknown subject suffix: acked and counted
    result: CommandResult | None = None  # the error result, when requester and request id are known
    requester: str = ""


class Publish(msgspec.Struct, frozen=True, kw_only=True):
    """One deduplicated JetStream publish."""

    subject: str
    data: bytes
    msg_id: str


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """One core-NATS publish to a user (no dedup: at least once, like the result)."""

    subject: str
    data: bytes


Parsed: TypeAlias = Command | Rejected


class CommandRunner(Protocol):
    """What the room_worker graph needs from its I/O side (runner.py)."""

    def reject(self, item: Parsed) -> Settle:
        """Settle a rejected delivery (after sending its error result)."""
        ...

    def apply(self, batches: Sequence[Sequence[object]]) -> list[Settle]:
        """Carry out commands and settle each; `batches` hold one room's commands in order."""
        ...

_DECODERS: Final[dict[RoomOp, Callable[[bytes], RoomCommand]]] = {
    RoomOp.CREATE: decode_create_room,
    RoomOp.MEMBER_ADD: decode_add_members,
    RoomOp.MEMBER_REMOVE: decode_remove_member,
    RoomOp.MEMBER_ROLE_UPDATE: decode_update_role,
    RoomOp.RENAME: decode_rename_room,
}
_OPERATIONS: Final = {
    RoomOp.CREATE: Operation.CREATE,
    RoomOp.MEMBER_ADD: Operation.MEMBER_ADD,
    RoomOp.MEMBER_REMOVE: Operation.MEMBER_REMOVE,
    RoomOp.MEMBER_ROLE_UPDATE: Operation.MEMBER_ROLE_UPDATE,
    RoomOp.RENAME: Operation.RENAME,
}


def is_command(item: Parsed) -> TypeGuard[Command]:
    """Whether `item` is a command to carry out."""
    return isinstance(item, Command)


def room_key(command: Command) -> str:
    """Key of the per-room ordering step."""
    return command.room_id


def valid_request_id(value: str | None) -> str:
    """The header value if it is a hyphenated UUID, else `""`."""
    if not value or len(value) != 36:
        return ""
    try:
        uuid.UUID(value)
    except ValueError:
        return ""
    return value.lower()


def payload_seed(body: RoomCommand) -> str:
    """Dedup base without a request id (SYSTEM.md §2.4).

    Role update and rename have no seed in the contract; theirs carry one more part than the others so that
    a record (`room_requests`, keyed by it) of one kind of command can never answer another.
    """
    if isinstance(body, RemoveMember):
        return f"{body.room_id}:{body.account or body.org_id}:{body.timestamp}"
    if isinstance(body, UpdateRole):
        return f"{body.room_id}:{body.account}:{body.new_role}:{body.timestamp}"
    if isinstance(body, RenameRoom):
        return f"{body.room_id}:{body.requester_account}:{body.timestamp}:rename"
    return f"{body.room_id}:{body.requester_account}:{body.timestamp}"


def requester_of(body: RoomCommand) -> str:
    """The account the result goes to."""
    return body.requester if isinstance(body, RemoveMember) else body.requester_account


def operation_of(body: RoomCommand) -> Operation:
    """`operation` of the command's result, named as the Go room-worker names it."""
    if isinstance(body, CreateRoom):
        return Operation.CREATE
    if isinstance(body, AddMembers):
        return Operation.MEMBER_ADD
    if isinstance(body, UpdateRole):
        return Operation.MEMBER_ROLE_UPDATE
    if isinstance(body, RenameRoom):
        return Operation.RENAME
    return Operation.MEMBER_REMOVE_ORG if body.org_id else Operation.MEMBER_REMOVE


def _loose_requester(data: bytes) -> str:
    """Best-effort requester of an undecodable body, so the requester still hears about the rejection."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return ""
    if not isinstance(raw, dict):
        return ""
    value = raw.get("requesterAccount") or raw.get("requester")
    return value if isinstance(value, str) and is_valid_token(value) else ""


def parse_command(delivery: Delivery, *, site: str, mint_id: NewId, now_ms: int) -> Parsed:
    """Decode a delivery from `ROOMS_{site}` into a command, or reject it with a reason."""
    parsed = subjects.parse_rooms_command(delivery.subject)
    if parsed is None or parsed[0] != site:
        return Rejected(delivery=delivery, reason=f"unknown room command subject {delivery.subject}", ignored=True)
    op = parsed[1]
    header_id = valid_request_id((delivery.headers or {}).get(REQUEST_ID_HEADER))
    request_id = header_id or mint_id()
    try:
        body = _DECODERS[op](delivery.data)
    except DecodeError as exc:
        requester = _loose_requester(delivery.data)
        result = None
        if requester:
            failure = Failure(code=ErrorCode.BAD_REQUEST, error=str(exc))
            result = error_result(request_id, _OPERATIONS[op], "", failure, now_ms)
        return Rejected(delivery=delivery, reason=f"bad_request: {exc}", result=result, requester=requester)
    problem = command_identifier_problem(body)
    if problem is not None:
        requester = requester_of(body)
        if not is_valid_token(requester):  # no subject to answer on: the dead letter is all there is
            return Rejected(delivery=delivery, reason=f"bad_request: {problem}")
        result = error_result(request_id, operation_of(body), "", Failure(code=ErrorCode.BAD_REQUEST, error=problem), now_ms)
        return Rejected(delivery=delivery, reason=f"bad_request: {problem}", result=result, requester=requester)
    return Command(delivery=delivery, op=op, body=body, request_id=request_id, dedup_base=header_id or payload_seed(body))


def command_identifier_problem(body: RoomCommand) -> str | None:
    """Why a command's ids cannot be used (issue 7): they end up in subjects and document ids.

    The requester's account names the result subject `chat.user.{account}.response.{id}`, so it must be
    one plain token (no `.bot` exception); org ids are plain tokens too.
    """
    requester = requester_of(body)
    if not is_valid_token(requester):
        return f"invalid requester account {requester!r}: needs a non-empty name without '.', '*', '>' or whitespace"
    if isinstance(body, RemoveMember):
        rooms, accounts, orgs = [body.room_id], [body.account] if body.account else [], [body.org_id] if body.org_id else []
    elif isinstance(body, UpdateRole):
        rooms, accounts, orgs = [body.room_id], [body.account], []
    elif isinstance(body, RenameRoom):
        rooms, accounts, orgs = [body.room_id], [], []
    else:
        rooms, accounts, orgs = [body.room_id, *(c.room_id for c in body.channels)], body.users, body.orgs
    problem = identifier_problem(room_ids=rooms, accounts=accounts)
    if problem is not None:
        return problem
    for org in orgs:
        if not is_valid_token(org):
            return f"invalid org id {org!r}: needs a non-empty id without '.', '*', '>' or whitespace"
    return None


def ok_result(command: Command, room_id: str, now_ms: int) -> CommandResult:
    """The `ok` result of `command`."""
    return CommandResult(
        request_id=command.request_id,
        operation=operation_of(command.body).value,
        status=ResultStatus.OK.value,
        room_id=room_id,
        timestamp=now_ms,
    )


def error_result(request_id: str, operation: Operation, room_id: str, failure: Failure, now_ms: int) -> CommandResult:
    """An `error` result with the failure's code."""
    return CommandResult(
        request_id=request_id,
        operation=operation.value,
        status=ResultStatus.ERROR.value,
        room_id=room_id,
        error=failure.error,
        code=failure.code.value,
        timestamp=now_ms,
    )
