"""What a room command does, decided once and recorded before it is carried out (SYSTEM.md §2.3).

A command is planned against the room's current state into an `Outcome`: the store writes, the
events (with their timestamps and dedup ids) and the requester's result. The outcome is saved as the
room's pending intent before anything is written; whoever meets it next (this command's redelivery,
or the room's next command) finishes exactly that outcome, so a room's commands take effect one at a
time in the order they were decided, and a request id has exactly one outcome. A finished request
leaves a record with its result: a retry or redelivery is answered from it and changes nothing.
"""

from __future__ import annotations

import msgspec

from dataflows.room_worker.commands import Notice, Publish
from schemas.commands import CommandResult
from schemas.documents import Room, RoomMember, Subscription


class RoomMemberKey(msgspec.Struct, frozen=True, array_like=True):
    """A `room_members` row by its unique key within the room."""

    type: str
    id: str


class SetRoles(msgspec.Struct, frozen=True, kw_only=True):
    """A member's new roles, written only over roles older than `at` (the command's acceptance time)."""

    account: str
    roles: list[str]
    at: int


class Rename(msgspec.Struct, frozen=True, kw_only=True):
    """The room's new name, written (room and every subscription) only over a name older than `at`."""

    name: str
    at: int
    updated_at: int  # the room's `updatedAt`


class RoomWrites(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The store writes of one command; each is idempotent, so finishing an outcome twice is harmless."""

    room: Room | None = None  # inserted unless present
    subscriptions: list[Subscription] = []  # insert-only
    room_members: list[RoomMember] = []  # insert-only
    unsubscribe: list[str] = []  # accounts whose subscriptions are deleted
    drop_rows: list[RoomMemberKey] = []
    drop_owner: list[str] = []  # accounts that lose the owner role
    counts: tuple[int, int] | None = None  # (userCount, appCount) afterwards
    set_roles: list[SetRoles] = []
    rename: Rename | None = None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a command does; `request_key` is its dedup base (the request id, or the payload seed)."""

    request_key: str
    room_id: str
    requester: str  # the account the result goes to
    writes: RoomWrites = RoomWrites()
    publishes: list[Publish] = []
    notices: list[Notice] = []  # sent after the publishes
    result: CommandResult
    ok: bool = True  # False: a permanent failure, dead-lettered with `reason`
    reason: str = ""


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Outcome)


def encode_outcome(outcome: Outcome) -> bytes:
    return _ENCODER.encode(outcome)


def decode_outcome(data: bytes) -> Outcome:
    return _DECODER.decode(data)
