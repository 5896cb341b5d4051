"""What a room command does, decided over the room's current state: create, add, remove, role update, rename (SYSTEM.md §2.3).

`RoomHandler.decide` reads through `store.Lookups` (or what the runner prefetched for the batch) and returns
the command's `Outcome`: its writes, its events and the requester's result. It writes and publishes
nothing; runner.py records the outcome and carries it out. Clock and id source come from the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import msgspec

from dataflows.room_worker import commands as rc
from dataflows.room_worker import events as room_events
from dataflows.room_worker import plans as plans
from dataflows.room_worker import updates as updates
from dataflows.room_worker.commands import Command, Notice, Publish
from dataflows.room_worker.outcomes import Outcome, Rename, RoomMemberKey, RoomWrites, SetRoles
from dataflows.room_worker.plans import Failure, NewId
from dataflows.room_worker.store import Lookups, Member
from schemas import streams
from schemas.commands import AddMembers, ChannelRef, CreateRoom, ErrorCode, RemoveMember, RenameRoom, UpdateRole
from schemas.documents import MemberType, Room, User

# what deciding a command gives: its writes and events (and core notices), or why it cannot be carried out
Decided: TypeAlias = tuple[RoomWrites, list[Publish]] | tuple[RoomWrites, list[Publish], list[Notice]] | Failure


class BatchReads(msgspec.Struct, frozen=True, kw_only=True):
    """Reads shared by the commands of one batch; `None`: not read, each command reads its own."""

    users: dict[str, User] | None = None  # by account
    org_users: list[User] | None = None  # users of any of `orgs`
    orgs: frozenset[str] = frozenset()
    # each room's state before the batch, by room id; taken (popped) by the room's first command
    rooms: dict[str, Room | None] | None = None
    members: dict[str, dict[str, Member]] | None = None
    room_orgs: dict[str, set[str]] | None = None


def _bots(members: Mapping[str, Member]) -> dict[str, bool]:
    return {account: m.is_bot for account, m in members.items()}


def _roles(members: Mapping[str, Member], account: str) -> list[str] | None:
    """`roles` of `account`'s subscription; `None` if not a member."""
    member = members.get(account)
    return None if member is None else member.roles


def looked_up(commands: Sequence[Command]) -> tuple[set[str], set[str]]:
    """The accounts and the orgs whose users deciding `commands` looks up (what a batch prefetches)."""
    accounts: set[str] = set()
    orgs: set[str] = set()
    for command in commands:
        body = command.body
        if isinstance(body, RemoveMember):
            accounts.update([body.account] if body.account else [])
            orgs.update([body.org_id] if body.org_id else [])
        elif isinstance(body, UpdateRole):
            accounts.update([body.requester_account, body.account])
        elif isinstance(body, RenameRoom):
            continue  # reads the room's members' users, which no batch prefetches
        else:
            accounts.update([body.requester_account, *body.users])
            orgs.update(body.orgs)
    return accounts, orgs


class RoomHandler:
    """Decides commands of site `site`'s rooms; reads what the batch did not prefetch from `store`."""

    def __init__(
        self, store: Lookups, *, site: str, clock: Callable[[], int], new_id: NewId, event_max_accounts: int = streams.EVENT_MAX_ACCOUNTS
    ) -> None:
        self._store = store
        self._site = site
        self._clock = clock
        self._new_id = new_id
        self._max_accounts = event_max_accounts  # a bigger lane is published in chunks (events.py)

    def decide(self, command: Command, reads: BatchReads) -> Outcome:
        """The command's outcome: writes, events and an `ok` result, or an error result (`ok=False`)."""
        body = command.body
        if isinstance(body, CreateRoom):
            decided = self._create(command, body, reads)
        elif isinstance(body, AddMembers):
            decided = self._add(command, body, reads)
        elif isinstance(body, UpdateRole):
            decided = self._role_update(command, body, reads)
        elif isinstance(body, RenameRoom):
            decided = self._rename(command, body, reads)
        elif body.org_id:
            decided = self._remove_org(command, body, reads)
        else:
            decided = self._remove_one(command, body, reads)
        requester = rc.requester_of(body)
        if isinstance(decided, Failure):
            result = rc.error_result(command.request_id, rc.operation_of(body), command.room_id, decided, self._clock())
            reason = f"{decided.code.value}: {decided.error}"
            return Outcome(request_key=command.dedup_base, room_id=command.room_id, requester=requester, result=result, ok=False, reason=reason)
        writes, publishes, *notices = decided
        return Outcome(
            request_key=command.dedup_base,
            room_id=command.room_id,
            requester=requester,
            writes=writes,
            publishes=publishes,
            notices=notices[0] if notices else [],
            result=rc.ok_result(command, command.room_id, self._clock()),
        )

    # A room's state as the batch found it serves only its first command: later ones must see what it wrote.
    def _room(self, reads: BatchReads, room_id: str) -> Room | None:
        if reads.rooms is not None and room_id in reads.rooms:
            return reads.rooms.pop(room_id)
        return self._store.room(room_id)

    def _members(self, reads: BatchReads, room_id: str) -> dict[str, Member]:
        if reads.members is not None and room_id in reads.members:
            return reads.members.pop(room_id)
        return self._store.members(room_id)

    def _room_orgs(self, reads: BatchReads, room_id: str) -> set[str]:
        if reads.room_orgs is not None and room_id in reads.room_orgs:
            return reads.room_orgs.pop(room_id)
        return self._store.room_orgs(room_id)

    def _users(self, reads: BatchReads, accounts: Sequence[str]) -> dict[str, User]:
        if reads.users is None:
            return self._store.users_by_accounts(accounts)
        return {a: reads.users[a] for a in accounts if a in reads.users}

    def _org_members(self, reads: BatchReads, orgs: Sequence[str]) -> list[User]:
        if not orgs:
            return []
        if reads.org_users is None or not reads.orgs.issuperset(orgs):
            return self._store.org_members(orgs)
        wanted = set(orgs)
        return [u for u in reads.org_users if u.sect_id in wanted or u.dept_id in wanted]

    def _channel_members(self, refs: Sequence[ChannelRef], requester: str) -> list[User] | Failure:
        """The members of the source channels `refs` (SYSTEM.md §2.3 `channels[]`), or why they cannot be added.

        Read from the store, not the batch's reads: those belong to the rooms the batch changes. The decided
        outcome keeps the list, so a retry adds exactly these members whatever the source channel became.
        """
        found: list[User] = []
        for ref in {ref.room_id: ref for ref in refs}.values():
            home_elsewhere = bool(ref.site_id) and ref.site_id != self._site
            room = None if home_elsewhere else self._store.room(ref.room_id)
            members = self._store.members(ref.room_id) if room is not None else {}
            failure = plans.check_source_channel(
                ref, home=self._site, room=room, requester=requester, requester_is_member=requester in members
            )
            if failure is not None:
                return failure
            subscribers = self._store.users_by_accounts(members).values()  # a subscriber without a user cannot be added
            found += plans.source_members(subscribers, self._store.org_members(self._store.room_orgs(ref.room_id)))
        return found

    def _create(self, command: Command, body: CreateRoom, reads: BatchReads) -> Decided:
        found = self._users(reads, [body.requester_account, *body.users])
        requester = found.get(body.requester_account)
        if requester is None:
            return Failure(code=ErrorCode.NOT_FOUND, error=f"requester {body.requester_account} not found")
        from_channels = self._channel_members(body.channels, requester.account) if body.channels else []
        if isinstance(from_channels, Failure):
            return from_channels
        org_members = self._org_members(reads, body.orgs)
        plan = plans.plan_create(
            body, home=self._site, requester=requester, found=found, org_members=org_members, new_id=self._new_id, from_channels=from_channels
        )
        if isinstance(plan, Failure):
            return plan
        existing = self._room(reads, body.room_id)
        if existing is not None:
            if (existing.type, existing.site_id) != (plan.room.type, plan.room.site_id):
                return Failure(code=ErrorCode.CONFLICT, error=f"room {existing.id} exists as a {existing.type} of site {existing.site_id}")
            if existing.type == plans.CHANNEL:  # another request's channel: never merge two member sets
                return Failure(code=ErrorCode.CONFLICT, error=f"room {existing.id} exists already")
            return RoomWrites(), []  # the dm exists (the counterpart opened it): nothing to do
        # a new room carries the counts of its plan (`updatedAt`: when it was counted)
        counts = plans.counts_after({}, plan.subscriptions)
        room = msgspec.structs.replace(plan.room, user_count=counts[0], app_count=counts[1], updated_at=self._clock())
        writes = RoomWrites(room=room, subscriptions=plan.subscriptions, room_members=plan.room_members)
        return writes, room_events.member_added_publishes(
            room=room,
            members=plan.members,
            requester_account=requester.account,
            joined_at=body.timestamp,
            history_shared_since=0,
            now_ms=self._clock(),
            dedup_base=command.dedup_base,
            max_accounts=self._max_accounts,
        )

    def _add(self, command: Command, body: AddMembers, reads: BatchReads) -> Decided:
        room = self._room(reads, body.room_id)
        found = self._users(reads, [body.requester_account, *body.users])
        before = self._members(reads, body.room_id) if room is not None else {}
        from_channels: list[User] | Failure = []
        if body.channels and room is not None and body.requester_account in before:  # else plan_add refuses the command
            from_channels = self._channel_members(body.channels, body.requester_account)
            if isinstance(from_channels, Failure):
                return from_channels
        plan = plans.plan_add(
            body,
            home=self._site,
            room=room,
            requester=found.get(body.requester_account),
            found=found,
            org_members=self._org_members(reads, body.orgs),
            subscribers={account: m.user_id for account, m in before.items()},
            room_orgs=self._room_orgs(reads, body.room_id),
            new_id=self._new_id,
            from_channels=from_channels,
        )
        if isinstance(plan, Failure) or room is None:
            return plan if isinstance(plan, Failure) else Failure(code=ErrorCode.NOT_FOUND, error="room not found")
        new = set(plan.new_accounts)
        members = [u for u in plan.candidates if u.account in new]
        hss = plans.history_shared_since(body)
        subs = plans.subscriptions_for(room, members, owner="", joined_at=body.timestamp, history_shared_since=hss, new_id=self._new_id)
        counts = plans.counts_after(_bots(before), added=subs) if subs else None
        writes = RoomWrites(subscriptions=subs, room_members=plan.room_members, counts=counts)
        return writes, room_events.member_added_publishes(
            room=room,
            members=members,
            requester_account=body.requester_account,
            joined_at=body.timestamp,
            history_shared_since=hss,
            now_ms=self._clock(),
            dedup_base=command.dedup_base,
            max_accounts=self._max_accounts,
        )

    def _remove_one(self, command: Command, body: RemoveMember, reads: BatchReads) -> Decided:
        user = self._users(reads, [body.account]).get(body.account)
        room = self._room(reads, body.room_id)
        before = self._members(reads, body.room_id) if room is not None else {}
        own_roles = _roles(before, body.account)
        plan = plans.plan_remove_one(
            body,
            home=self._site,
            room=room,
            user=user,
            is_member=own_roles is not None,
            requester_roles=own_roles if body.requester == body.account else _roles(before, body.requester),
            room_orgs=self._room_orgs(reads, body.room_id),
            owners=[account for account, m in before.items() if plans.OWNER in m.roles],
            member_count=len(before),
        )
        if isinstance(plan, Failure) or user is None:
            return plan if isinstance(plan, Failure) else Failure(code=ErrorCode.NOT_FOUND, error="user not found")
        row = RoomMemberKey(type=MemberType.INDIVIDUAL.value, id=user.id)
        if plan.demote is not None:  # still in through an org: only the individual standing goes
            return RoomWrites(drop_rows=[row], drop_owner=[user.account]), []
        gone = [u.account for u in plan.remove]
        counts = plans.counts_after(_bots(before), removed=gone) if gone else None
        writes = RoomWrites(unsubscribe=gone, drop_rows=[row], counts=counts)
        return writes, room_events.member_removed_publishes(
            home=self._site,
            room_id=body.room_id,
            members=plan.remove,
            inner_type=plan.inner_type,
            org_id="",
            now_ms=self._clock(),
            dedup_base=command.dedup_base,
            max_accounts=self._max_accounts,
        )

    def _remove_org(self, command: Command, body: RemoveMember, reads: BatchReads) -> Decided:
        org_members = self._org_members(reads, [body.org_id])
        room = self._room(reads, body.room_id)
        before = self._members(reads, body.room_id) if room is not None else {}
        plan = plans.plan_remove_org(
            body,
            home=self._site,
            room=room,
            org_members=org_members,
            subscribers={account: m.user_id for account, m in before.items()},
            individual_ids=self._store.individual_ids(body.room_id),
            requester_roles=_roles(before, body.requester),
            room_orgs=self._room_orgs(reads, body.room_id),
        )
        if isinstance(plan, Failure):
            return plan
        gone = [u.account for u in plan.remove]
        counts = plans.counts_after(_bots(before), removed=gone) if gone else None
        writes = RoomWrites(unsubscribe=gone, drop_rows=[RoomMemberKey(type=MemberType.ORG.value, id=body.org_id)], counts=counts)
        return writes, room_events.member_removed_publishes(
            home=self._site,
            room_id=body.room_id,
            members=plan.remove,
            inner_type=plan.inner_type,
            org_id=body.org_id,
            now_ms=self._clock(),
            dedup_base=command.dedup_base,
            max_accounts=self._max_accounts,
        )

    def _role_update(self, command: Command, body: UpdateRole, reads: BatchReads) -> Decided:
        room = self._room(reads, body.room_id)
        before = self._members(reads, body.room_id) if room is not None else {}
        target = self._store.subscription(body.room_id, body.account) if body.account in before else None
        user = self._users(reads, [body.account]).get(body.account)
        org_only = False
        if user is not None and body.new_role == plans.OWNER:
            in_orgs = self._room_orgs(reads, body.room_id) & ({user.sect_id, user.dept_id} - {""})
            org_only = bool(in_orgs) and user.id not in self._store.individual_ids(body.room_id)
        roles = {account: m.roles for account, m in before.items()}
        plan = updates.plan_role_update(body, home=self._site, room=room, roles_by_account=roles, target=target, org_only=org_only)
        if isinstance(plan, Failure) or plan.stale or room is None or target is None:
            return plan if isinstance(plan, Failure) else (RoomWrites(), [])
        if user is None:  # a subscription whose user is gone: no site to tell, no user id to name
            return Failure(code=ErrorCode.NOT_FOUND, error=f"user {body.account} not found")
        now = self._clock()
        writes = RoomWrites(set_roles=[SetRoles(account=body.account, roles=plan.roles, at=body.timestamp)])
        publishes = room_events.role_updated_publishes(
            home=self._site, user=user, room_id=body.room_id, roles=plan.roles, now_ms=now, dedup_base=command.dedup_base
        )
        return writes, publishes, room_events.role_notice(target, roles=plan.roles, room_name=room.name, now_ms=now)

    def _rename(self, command: Command, body: RenameRoom, reads: BatchReads) -> Decided:
        room = self._room(reads, body.room_id)
        before = self._members(reads, body.room_id) if room is not None else {}
        plan = updates.plan_rename(body, home=self._site, room=room, requester_roles=_roles(before, body.requester_account))
        if isinstance(plan, Failure) or not plan:  # a stale rename: ok, and nothing changes
            return plan if isinstance(plan, Failure) else (RoomWrites(), [])
        now = self._clock()
        sites = {u.site_id for u in self._store.users_by_accounts(before).values() if u.site_id}
        writes = RoomWrites(rename=Rename(name=body.new_name, at=body.timestamp, updated_at=now))
        return writes, room_events.room_renamed_publishes(
            home=self._site, room_id=body.room_id, new_name=body.new_name, remote_sites=sites, now_ms=now, dedup_base=command.dedup_base
        )
