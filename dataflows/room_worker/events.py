"""The events a room command publishes: the local lane and one OUTBOX event per remote site (SYSTEM.md §3).

A lane whose accounts exceed `max_accounts` is split into chunks of at most that many accounts, one event
each, all with the command's timestamp: consumers key by account (room+account), so a chunk is simply an
event listing fewer accounts. dm / botDM events (two members, named after the counterpart) are never split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dataflows.room_worker.commands import Notice, Publish
from schemas import subjects
from schemas.documents import Room, Subscription, User
from schemas.envelope import EventType, OutboxEvent, encode_envelope
from schemas.events import (
    ROLE_UPDATED_ACTION,
    InnerEvent,
    MemberAddEvent,
    MemberRemoveEvent,
    NoticeSubscription,
    NoticeUser,
    RoleSubscription,
    RoleUpdatedEvent,
    RoleUser,
    RoomRenamedEvent,
    SubscriptionUpdateEvent,
    encode_event,
)
from schemas.membership import is_direct
from schemas.names import is_valid_token


def dedup_id(base: str, dest_site: str, chunk: int = 0) -> str:
    """`Nats-Msg-Id` of one publish: `{requestId}:{destSite}` (the local lane uses the home site), §2.4.

    Chunk k >= 1 of a split lane adds `#{k}`: after the last `:` it leaves `{destSite}#{k}`, never a site id
    (no `#` in those), so it can equal neither any chunk 0 id nor another chunk's, whatever the base holds.
    """
    return f"{base}:{dest_site}" if chunk == 0 else f"{base}:{dest_site}#{chunk}"


def chunked(accounts: Sequence[str], max_accounts: int | None) -> list[list[str]]:
    """`accounts` in order, in slices of `max_accounts` (one slice when `None` or when they fit)."""
    if max_accounts is not None and max_accounts < 1:
        msg = f"max_accounts must be positive, got {max_accounts}"
        raise ValueError(msg)
    if max_accounts is None or len(accounts) <= max_accounts:
        return [list(accounts)]
    return [list(accounts[start : start + max_accounts]) for start in range(0, len(accounts), max_accounts)]


def accounts_by_remote_site(home: str, members: Sequence[User]) -> dict[str, list[str]]:
    """Accounts grouped by their site, without the home site and without users of no known site."""
    grouped: dict[str, list[str]] = {}
    for user in members:
        if user.site_id and user.site_id != home:
            grouped.setdefault(user.site_id, []).append(user.account)
    return dict(sorted(grouped.items()))


def _publish(event: InnerEvent, event_type: EventType, *, home: str, dest: str, now_ms: int, base: str, chunk: int = 0) -> Publish:
    envelope = OutboxEvent(type=event_type.value, site_id=home, dest_site_id=dest, payload=encode_event(event), timestamp=now_ms)
    if dest == home:
        subject = subjects.inbox_local(home, event_type.value)
    else:
        subject = subjects.outbox(origin=home, dest=dest, event_type=event_type.value)
    return Publish(subject=subject, data=encode_envelope(envelope), msg_id=dedup_id(base, dest, chunk))


def member_added_publishes(
    *,
    room: Room,
    members: Sequence[User],
    requester_account: str,
    joined_at: int,
    history_shared_since: int,
    now_ms: int,
    dedup_base: str,
    max_accounts: int | None = None,
) -> list[Publish]:
    """The local-lane `member_added` listing every member, then one per remote site with only its accounts.

    Each lane in chunks of at most `max_accounts` accounts (`None`: one event per lane); dm / botDM never.
    """
    if not members:
        return []
    home = room.site_id
    limit = None if is_direct(room.type) else max_accounts

    def event(accounts: list[str]) -> MemberAddEvent:
        added = MemberAddEvent(
            type=EventType.MEMBER_ADDED.value,
            room_id=room.id,
            room_name=room.name,
            room_type=room.type,
            accounts=accounts,
            site_id=home,
            requester_account=requester_account,
            joined_at=joined_at,
            timestamp=now_ms,
        )
        if history_shared_since > 0:
            added.history_shared_since = history_shared_since
        return added

    lanes = {home: [m.account for m in members], **accounts_by_remote_site(home, members)}
    return [
        _publish(event(part), EventType.MEMBER_ADDED, home=home, dest=dest, now_ms=now_ms, base=dedup_base, chunk=k)
        for dest, accounts in lanes.items()
        for k, part in enumerate(chunked(accounts, limit))
    ]


def member_removed_publishes(
    *,
    home: str,
    room_id: str,
    members: Sequence[User],
    inner_type: str,
    org_id: str,
    now_ms: int,
    dedup_base: str,
    max_accounts: int | None = None,
) -> list[Publish]:
    """The local-lane `member_removed` for every removed member, then one per remote site with only its accounts.

    Each lane in chunks of at most `max_accounts` accounts (`None`: one event per lane).
    """
    if not members:
        return []

    def event(accounts: list[str]) -> MemberRemoveEvent:
        return MemberRemoveEvent(type=inner_type, room_id=room_id, accounts=accounts, site_id=home, org_id=org_id, timestamp=now_ms)

    lanes = {home: [m.account for m in members], **accounts_by_remote_site(home, members)}
    return [
        _publish(event(part), EventType.MEMBER_REMOVED, home=home, dest=dest, now_ms=now_ms, base=dedup_base, chunk=k)
        for dest, accounts in lanes.items()
        for k, part in enumerate(chunked(accounts, max_accounts))
    ]


def role_updated_publishes(*, home: str, user: User, room_id: str, roles: list[str], now_ms: int, dedup_base: str) -> list[Publish]:
    """`role_updated` on the OUTBOX to the member's site when that is another one (its own site needs no event)."""
    if not user.site_id or user.site_id == home:
        return []
    sub = RoleSubscription(room_id=room_id, u=RoleUser(account=user.account), roles=roles)
    event = RoleUpdatedEvent(user_id=user.id, subscription=sub, action=ROLE_UPDATED_ACTION, timestamp=now_ms)
    return [_publish(event, EventType.ROLE_UPDATED, home=home, dest=user.site_id, now_ms=now_ms, base=dedup_base)]


def role_notice(sub: Subscription, *, roles: list[str], room_name: str, now_ms: int) -> list[Notice]:
    """The Go room-service's `subscription.update` notice of a role change: the subscription as it now is.

    Nothing for an account that is not one subject token (a bot's `.bot`): it has no subject of its own.
    """
    account = sub.u.account
    if not is_valid_token(account):
        return []
    view = NoticeSubscription(
        id=sub.id,
        u=NoticeUser(id=sub.u.id, account=account, is_bot=sub.u.is_bot),
        room_id=sub.room_id,
        site_id=sub.site_id,
        roles=roles,
        name=sub.name,
        room_type=sub.room_type,
        is_subscribed=sub.is_subscribed,
        history_shared_since=sub.history_shared_since,
        joined_at=sub.joined_at,
    )
    event = SubscriptionUpdateEvent(user_id=sub.u.id, subscription=view, action=ROLE_UPDATED_ACTION, room_name=room_name, timestamp=now_ms)
    return [Notice(subject=subjects.subscription_update(account), data=encode_event(event))]


def room_renamed_publishes(*, home: str, room_id: str, new_name: str, remote_sites: Iterable[str], now_ms: int, dedup_base: str) -> list[Publish]:
    """The local-lane `room_renamed`, then one on the OUTBOX per remote site that has members."""
    event = RoomRenamedEvent(room_id=room_id, new_name=new_name, timestamp=now_ms)
    dests = [home, *sorted(set(remote_sites) - {home})]
    return [_publish(event, EventType.ROOM_RENAMED, home=home, dest=dest, now_ms=now_ms, base=dedup_base) for dest in dests]
