"""Plans of room commands, purely: who joins or leaves, which documents to write (SYSTEM.md §3)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import msgspec

from schemas.commands import AddMembers, ChannelRef, CreateRoom, ErrorCode, RemoveMember
from schemas.documents import (
    MemberType,
    Room,
    RoomMember,
    RoomMemberRef,
    Subscription,
    User,
)
from schemas.envelope import EventType
from schemas.events import MEMBER_LEFT, RoomType
from schemas.membership import is_bot, subscription_for

CHANNEL: Final = RoomType.CHANNEL.value
OWNER: Final = "owner"
MEMBER: Final = "member"
MAX_CHANNEL_NAME: Final = 100  # characters, as the Go room-service allows

NewId: TypeAlias = Callable[[], str]


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """A permanent failure of a command, sent as an error result and dead-lettered."""

    code: ErrorCode
    error: str


def room_type_of(command: CreateRoom) -> str:
    """SYSTEM.md §2.3: one user, no name, orgs or channels ⇒ dm (botDM for a bot), else channel."""
    if not command.name and not command.orgs and not command.channels and len(command.users) == 1:
        return RoomType.BOT_DM.value if is_bot(command.users[0]) else RoomType.DM.value
    return CHANNEL


def direct_room_id(user_id_a: str, user_id_b: str) -> str:
    """dm / botDM room id: the two user ids concatenated in lexicographic order."""
    return "".join(sorted((user_id_a, user_id_b)))


def _unique_users(users: Iterable[User]) -> list[User]:
    seen: set[str] = set()
    out: list[User] = []
    for user in users:
        if user.account not in seen:
            seen.add(user.account)
            out.append(user)
    return out


def channel_name_problem(name: str) -> str | None:
    """Why `name` cannot name a channel (at create and at rename), or None: not blank, at most 100 characters."""
    if not name.strip():
        return "a channel needs a name"
    if len(name) > MAX_CHANNEL_NAME:
        return f"a channel name has at most {MAX_CHANNEL_NAME} characters, got {len(name)}"
    return None


def missing_accounts(wanted: Sequence[str], found: Mapping[str, User]) -> list[str]:
    """Requested accounts absent from the `users` collection."""
    return [account for account in wanted if account not in found]


def expand_members(
    requested: Sequence[str], found: Mapping[str, User], org_members: Iterable[User], from_channels: Sequence[User] = ()
) -> list[User]:
    """Requested users in request order, then channels' members, then org members by account, bots from orgs excluded (§3)."""
    from_orgs = sorted((u for u in org_members if not is_bot(u.account)), key=lambda u: u.account)
    return _unique_users([found[a] for a in requested] + list(from_channels) + from_orgs)


def check_source_channel(ref: ChannelRef, *, home: str, room: Room | None, requester: str, requester_is_member: bool) -> Failure | None:
    """Whether the members of channel `ref` may be added (`channels[]` of create / add, SYSTEM.md §2.3).

    Only this site's channels are expanded here: another site's member list is not in this site's store.
    """
    if ref.site_id and ref.site_id != home:
        error = f"channel {ref.room_id} is homed on site {ref.site_id}: site {home} adds members of its own channels only"
        return Failure(code=ErrorCode.BAD_REQUEST, error=error)
    if room is None:
        return Failure(code=ErrorCode.NOT_FOUND, error=f"channel {ref.room_id} not found")
    if room.site_id != home:
        error = f"channel {ref.room_id} is homed on site {room.site_id}: site {home} adds members of its own channels only"
        return Failure(code=ErrorCode.BAD_REQUEST, error=error)
    if room.type != CHANNEL:
        return Failure(code=ErrorCode.BAD_REQUEST, error=f"room {ref.room_id} is a {room.type}: only a channel's members can be added")
    if not requester_is_member:
        return Failure(code=ErrorCode.FORBIDDEN, error=f"{requester} is not a member of channel {ref.room_id}")
    return None


def source_members(subscribers: Iterable[User], org_members: Iterable[User]) -> list[User]:
    """A source channel's members to add: its subscribers and its orgs' users, bots excluded, once each, by account."""
    return sorted(_unique_users(u for u in [*subscribers, *org_members] if not is_bot(u.account)), key=lambda u: u.account)


class CreatePlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a create-room writes; `members` are announced in this order."""

    room: Room
    members: list[User]
    subscriptions: list[Subscription]
    room_members: list[RoomMember]


def plan_create(
    command: CreateRoom,
    *,
    home: str,
    requester: User,
    found: Mapping[str, User],
    org_members: Iterable[User],
    new_id: NewId,
    from_channels: Sequence[User] = (),
) -> CreatePlan | Failure:
    """Validate a create-room against the users found and shape its room, subscriptions and rows.

    `from_channels`: the members of the command's `channels` (checked and expanded by the handler).
    """
    missing = missing_accounts(command.users, found)
    if missing:
        return Failure(code=ErrorCode.NOT_FOUND, error=f"user {missing[0]} not found")
    room_type = room_type_of(command)
    direct = room_type != CHANNEL
    if direct:
        counterpart = found[command.users[0]]
        if counterpart.account == requester.account:
            return Failure(code=ErrorCode.BAD_REQUEST, error="a dm needs two different users")
        expected = direct_room_id(requester.id, counterpart.id)
        if command.room_id != expected:
            return Failure(code=ErrorCode.BAD_REQUEST, error=f"dm room id must be {expected}")
        members = [requester, counterpart]
    else:
        problem = channel_name_problem(command.name)
        if problem is not None:
            return Failure(code=ErrorCode.BAD_REQUEST, error=problem)
        members = _unique_users([requester, *expand_members(command.users, found, org_members, from_channels)])
    ts = command.timestamp
    room = Room(id=command.room_id, name="" if direct else command.name, type=room_type, site_id=home, created_at=ts, updated_at=ts)
    subs = subscriptions_for(room, members, owner=requester.account, joined_at=ts, history_shared_since=0, new_id=new_id)
    rows: list[RoomMember] = []
    if command.orgs:  # without orgs ("lite mode") membership needs no explanation
        rows = individual_rows(room.id, [requester, *(found[a] for a in command.users), *from_channels], ts, new_id)
        rows += org_rows(room.id, command.orgs, ts, new_id)
    return CreatePlan(room=room, members=members, subscriptions=subs, room_members=rows)


def subscriptions_for(
    room: Room, members: Iterable[User], *, owner: str, joined_at: int, history_shared_since: int, new_id: NewId
) -> list[Subscription]:
    """One subscription per member, shaped by the table of SYSTEM.md §3."""
    members = list(members)
    accounts = [m.account for m in members]
    return [
        subscription_for(
            sub_id=new_id(),
            user_id=m.id,
            account=m.account,
            room_id=room.id,
            room_type=room.type,
            room_name=room.name,
            home_site=room.site_id,
            counterpart=next((a for a in accounts if a != m.account), ""),
            is_owner=m.account == owner,
            joined_at=joined_at,
            history_shared_since=history_shared_since,
        )
        for m in members
    ]


def individual_rows(room_id: str, users: Iterable[User], ts: int, new_id: NewId) -> list[RoomMember]:
    """`room_members` rows saying these users are in the room on their own."""
    return [
        RoomMember(id=new_id(), rid=room_id, ts=ts, member=RoomMemberRef(id=u.id, type=MemberType.INDIVIDUAL.value, account=u.account))
        for u in _unique_users(users)
    ]


def org_rows(room_id: str, orgs: Iterable[str], ts: int, new_id: NewId) -> list[RoomMember]:
    """`room_members` rows saying these orgs are in the room."""
    return [RoomMember(id=new_id(), rid=room_id, ts=ts, member=RoomMemberRef(id=o, type=MemberType.ORG.value)) for o in dict.fromkeys(orgs)]


def check_channel(room: Room | None, room_id: str, home: str, doing: str = "change members") -> Failure | None:
    """The room exists, is homed here and is a channel; `doing` says what only channels do."""
    if room is None:
        return Failure(code=ErrorCode.NOT_FOUND, error=f"room {room_id} not found")
    if room.site_id != home:
        return Failure(code=ErrorCode.CONFLICT, error=f"room {room_id} is homed on {room.site_id}, not {home}")
    if room.type != CHANNEL:
        return Failure(code=ErrorCode.BAD_REQUEST, error=f"only channels {doing}, room {room_id} is a {room.type}")
    return None


def not_an_owner(requester: str, room_id: str) -> Failure:
    """The refusal of an owner-only command (docs/DESIGN.md, "Who may do what")."""
    return Failure(code=ErrorCode.FORBIDDEN, error=f"{requester} is not an owner of room {room_id}")


class AddPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Who an add-members brings in: `new_accounts` had no subscription before this command."""

    candidates: list[User]
    new_accounts: list[str]
    room_members: list[RoomMember]


def plan_add(
    command: AddMembers,
    *,
    home: str,
    room: Room | None,
    requester: User | None,
    found: Mapping[str, User],
    org_members: Iterable[User],
    subscribers: Mapping[str, str],
    room_orgs: set[str],
    new_id: NewId,
    from_channels: Sequence[User] = (),
) -> AddPlan | Failure:
    """Validate an add-members; `subscribers` maps the room's current accounts to user ids.

    The requester must be a member; `from_channels` are the members of the command's `channels` (handler).
    """
    failure = check_channel(room, command.room_id, home)
    if failure is not None:
        return failure
    if requester is None:
        return Failure(code=ErrorCode.NOT_FOUND, error=f"requester {command.requester_account} not found")
    if requester.account not in subscribers:
        return Failure(code=ErrorCode.FORBIDDEN, error=f"{requester.account} is not a member of room {command.room_id}")
    missing = missing_accounts(command.users, found)
    if missing:
        return Failure(code=ErrorCode.NOT_FOUND, error=f"user {missing[0]} not found")
    candidates = expand_members(command.users, found, org_members, from_channels)
    new_accounts = [u.account for u in candidates if u.account not in subscribers]
    rows: list[RoomMember] = []
    ts = command.timestamp
    if command.orgs or room_orgs:  # org membership exists: record why each user is in the room
        rows = individual_rows(command.room_id, [*(found[a] for a in command.users), *from_channels], ts, new_id)
        rows += org_rows(command.room_id, command.orgs, ts, new_id)
        if command.orgs and not room_orgs:  # first org: everyone already in was there on their own
            earlier = [User(id=uid, account=acc, site_id="") for acc, uid in sorted(subscribers.items())]
            rows += individual_rows(command.room_id, earlier, ts, new_id)
    return AddPlan(candidates=candidates, new_accounts=new_accounts, room_members=rows)


def room_counts(bots_by_account: Mapping[str, bool]) -> tuple[int, int]:
    """(`userCount`, `appCount`) of a room whose subscriptions are these accounts (value: the account is a bot)."""
    apps = sum(1 for bot in bots_by_account.values() if bot)
    return len(bots_by_account) - apps, apps


def counts_after(before: Mapping[str, bool], added: Iterable[Subscription] = (), removed: Iterable[str] = ()) -> tuple[int, int]:
    """The room's counts once `added` were inserted (insert-only: an existing one stays) and `removed` deleted."""
    after = dict(before)
    for sub in added:
        after.setdefault(sub.u.account, sub.u.is_bot)
    for account in removed:
        after.pop(account, None)
    return room_counts(after)


def history_shared_since(command: AddMembers) -> int:
    """`historySharedSince` of an add: its acceptance time when history is hidden, else 0 (absent)."""
    return command.timestamp if command.history.mode == "none" else 0


def _check_owner(command: RemoveMember, requester_roles: Sequence[str] | None) -> Failure | None:
    if command.account == command.requester or OWNER in (requester_roles or ()):
        return None
    return not_an_owner(command.requester, command.room_id)


def last_owner(account: str, owners: Collection[str]) -> bool:
    """Whether `account` is the room's only owner."""
    return account in owners and len(owners) <= 1


class RemovePlan(msgspec.Struct, frozen=True, kw_only=True):
    """Who a remove-member takes out; `demote` keeps a user who is still covered by an org (no events)."""

    remove: list[User]
    demote: User | None = None
    inner_type: str = EventType.MEMBER_REMOVED.value


def plan_remove_one(
    command: RemoveMember,
    *,
    home: str,
    room: Room | None,
    user: User | None,
    is_member: bool,
    requester_roles: Sequence[str] | None,
    room_orgs: set[str],
    owners: Collection[str] = (),
    member_count: int = 0,
) -> RemovePlan | Failure:
    """Self-leave or removal by an owner; a user still in through an org only loses individual standing.

    The last owner cannot go (nor lose the role) while others stay: the room would have no owner left.
    """
    failure = check_channel(room, command.room_id, home) or _check_owner(command, requester_roles)
    if failure is not None:
        return failure
    if last_owner(command.account, owners) and member_count > 1:
        error = f"{command.account} is the last owner of room {command.room_id}: promote another member first"
        return Failure(code=ErrorCode.CONFLICT, error=error)
    if command.room_type and command.room_type != CHANNEL:
        return Failure(code=ErrorCode.BAD_REQUEST, error=f"only channels change members, not {command.room_type}")
    if user is None:
        return Failure(code=ErrorCode.NOT_FOUND, error=f"user {command.account} not found")
    inner = MEMBER_LEFT if command.account == command.requester else EventType.MEMBER_REMOVED.value
    if room_orgs & {user.sect_id, user.dept_id} - {""}:
        return RemovePlan(remove=[], demote=user, inner_type=inner)
    return RemovePlan(remove=[user] if is_member else [], inner_type=inner)


def plan_remove_org(
    command: RemoveMember,
    *,
    home: str,
    room: Room | None,
    org_members: Iterable[User],
    subscribers: Mapping[str, str],
    individual_ids: set[str],
    requester_roles: Sequence[str] | None,
    room_orgs: set[str],
) -> RemovePlan | Failure:
    """An org's members leave unless they are in the room on their own or through another org (§3)."""
    failure = check_channel(room, command.room_id, home) or _check_owner(command, requester_roles)
    if failure is not None:
        return failure
    other_orgs = room_orgs - {command.org_id}
    remove = [
        u
        for u in sorted(org_members, key=lambda u: u.account)
        if u.account in subscribers and u.id not in individual_ids and not other_orgs & ({u.sect_id, u.dept_id} - {""})
    ]
    return RemovePlan(remove=_unique_users(remove))
