"""The membership events a room command publishes: the local lane and one OUTBOX event per remote site (SYSTEM.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

from dataflows.room_worker.commands import Publish
from schemas import subjects
from schemas.documents import Room, User
from schemas.envelope import EventType, OutboxEvent, encode_envelope
from schemas.events import InnerEvent, MemberAddEvent, MemberRemoveEvent, encode_event


def dedup_id(base: str, dest_site: str) -> str:
    """`Nats-Msg-Id` of one publish: `{requestId}:{destSite}` (the local lane uses the home site), §2.4."""
    return f"{base}:{dest_site}"


def accounts_by_remote_site(home: str, members: Sequence[User]) -> dict[str, list[str]]:
    """Accounts grouped by their site, without the home site and without users of no known site."""
    grouped: dict[str, list[str]] = {}
    for user in members:
        if user.site_id and user.site_id != home:
            grouped.setdefault(user.site_id, []).append(user.account)
    return dict(sorted(grouped.items()))


def _publish(event: InnerEvent, event_type: EventType, *, home: str, dest: str, now_ms: int, base: str) -> Publish:
    envelope = OutboxEvent(type=event_type.value, site_id=home, dest_site_id=dest, payload=encode_event(event), timestamp=now_ms)
    if dest == home:
        subject = subjects.inbox_local(home, event_type.value)
    else:
        subject = subjects.outbox(origin=home, dest=dest, event_type=event_type.value)
    return Publish(subject=subject, data=encode_envelope(envelope), msg_id=dedup_id(base, dest))


def member_added_publishes(
    *,
    room: Room,
    members: Sequence[User],
    requester_account: str,
    joined_at: int,
    history_shared_since: int,
    now_ms: int,
    dedup_base: str,
) -> list[Publish]:
    """The local-lane `member_added` listing every member, then one per remote site with only its accounts."""
    if not members:
        return []
    home = room.site_id

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

    out = [_publish(event([m.account for m in members]), EventType.MEMBER_ADDED, home=home, dest=home, now_ms=now_ms, base=dedup_base)]
    for dest, accounts in accounts_by_remote_site(home, members).items():
        out.append(_publish(event(accounts), EventType.MEMBER_ADDED, home=home, dest=dest, now_ms=now_ms, base=dedup_base))
    return out


def member_removed_publishes(
    *,
    home: str,
    room_id: str,
    members: Sequence[User],
    inner_type: str,
    org_id: str,
    now_ms: int,
    dedup_base: str,
) -> list[Publish]:
    """The local-lane `member_removed` for every removed member, then one per remote site with only its accounts."""
    if not members:
        return []

    def event(accounts: list[str]) -> MemberRemoveEvent:
        return MemberRemoveEvent(type=inner_type, room_id=room_id, accounts=accounts, site_id=home, org_id=org_id, timestamp=now_ms)

    out = [_publish(event([m.account for m in members]), EventType.MEMBER_REMOVED, home=home, dest=home, now_ms=now_ms, base=dedup_base)]
    for dest, accounts in accounts_by_remote_site(home, members).items():
        out.append(_publish(event(accounts), EventType.MEMBER_REMOVED, home=home, dest=dest, now_ms=now_ms, base=dedup_base))
    return out
