"""Plans of the commands that change a channel without changing who is in it: role update and rename (SYSTEM.md §3).

Both are last-write-wins by the command's acceptance time (`timestamp`): a command no newer than the change
already applied (`rolesUpdatedAt`, `nameUpdatedAt`), or than the membership it would change (`joinedAt`), is
stale and changes nothing, so the state follows the newest command whatever order they arrive in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from dataflows.room_worker.plans import MEMBER, OWNER, Failure, channel_name_problem, check_channel, last_owner, not_an_owner
from schemas.commands import ErrorCode, RenameRoom, UpdateRole
from schemas.documents import Room, Subscription


class RolePlan(msgspec.Struct, frozen=True, kw_only=True):
    """The member's roles after a role update; `stale`: an older command, nothing changes."""

    roles: list[str]
    stale: bool = False


def roles_after(current: Sequence[str], new_role: str) -> list[str]:
    """Promote adds `owner`; demote keeps (or adds) `member` and takes `owner` away. Other roles stay."""
    if new_role == OWNER:
        return list(current) if OWNER in current else [*current, OWNER]
    kept = [r for r in current if r != OWNER]
    return kept if MEMBER in kept else [MEMBER, *kept]


def _newest(*stamps: object) -> int:
    return max((s for s in stamps if isinstance(s, int)), default=0)


def plan_role_update(
    command: UpdateRole,
    *,
    home: str,
    room: Room | None,
    roles_by_account: Mapping[str, Sequence[str]],
    target: Subscription | None,
    org_only: bool,
) -> RolePlan | Failure:
    """Check and plan a role update; `roles_by_account` are the room's members' roles, `target` the member's subscription.

    `org_only`: the member is in the room through an org alone (they cannot own it: removing the org would
    take an owner out without anyone deciding so).
    """
    failure = check_channel(room, command.room_id, home, "have roles")
    if failure is not None:
        return failure
    if OWNER not in roles_by_account.get(command.requester_account, ()):
        return not_an_owner(command.requester_account, command.room_id)
    if target is None or command.account not in roles_by_account:
        return Failure(code=ErrorCode.BAD_REQUEST, error=f"{command.account} is not a member of room {command.room_id}")
    current = list(target.roles or [])
    if command.timestamp <= _newest(target.joined_at, target.roles_updated_at):
        return RolePlan(roles=current, stale=True)
    if command.new_role == OWNER and org_only and OWNER not in current:
        return Failure(code=ErrorCode.BAD_REQUEST, error=f"only individual members can be owners; {command.account} is in through an org")
    owners = [a for a, roles in roles_by_account.items() if OWNER in roles]
    if command.new_role == MEMBER and last_owner(command.account, owners):
        return Failure(code=ErrorCode.CONFLICT, error=f"{command.account} is the last owner of room {command.room_id}")
    return RolePlan(roles=roles_after(current, command.new_role))


def plan_rename(command: RenameRoom, *, home: str, room: Room | None, requester_roles: Sequence[str] | None) -> bool | Failure:
    """Check a rename: True when it is to be carried out, False when it is stale (an older rename than the room's name)."""
    problem = channel_name_problem(command.new_name)
    if problem is not None:
        return Failure(code=ErrorCode.BAD_REQUEST, error=problem)
    failure = check_channel(room, command.room_id, home, "are renamed")
    if failure is not None or room is None:
        return failure or Failure(code=ErrorCode.NOT_FOUND, error=f"room {command.room_id} not found")
    if OWNER not in (requester_roles or ()):
        return not_an_owner(command.requester_account, command.room_id)
    return command.timestamp > _newest(room.name_updated_at)
