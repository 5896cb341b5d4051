"""Subscription shaping shared by room_worker (from commands) and inbox_mirror (from events): SYSTEM.md §3, §4."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from msgspec import UNSET

from schemas.documents import Subscription, SubscriptionUser
from schemas.events import MemberAddEvent, RoomType, effective_room_type

OWNER_ROLES: Final = ["owner"]
MEMBER_ROLES: Final = ["member"]
DIRECT_TYPES: Final = frozenset({RoomType.DM.value, RoomType.BOT_DM.value})


def is_bot(account: str) -> bool:
    """Bots are accounts ending in `.bot` or starting with `p_`."""
    return account.endswith(".bot") or account.startswith("p_")


def is_direct(room_type: str) -> bool:
    """dm and botDM rooms have no name of their own and are named after the counterpart."""
    return room_type in DIRECT_TYPES


def counterpart_of(account: str, accounts: Sequence[str], requester: str) -> str:
    """The other member of a dm / botDM: the other account listed, else the requester."""
    for other in accounts:
        if other != account:
            return other
    return requester if requester != account else ""


def subscription_for(
    *,
    sub_id: str,
    user_id: str,
    account: str,
    room_id: str,
    room_type: str,
    room_name: str,
    home_site: str,
    counterpart: str,
    is_owner: bool,
    joined_at: int,
    history_shared_since: int = 0,
) -> Subscription:
    """The subscription of `account` to a room, per the table in SYSTEM.md §3 (and §4 for discussions)."""
    if is_direct(room_type):
        name, roles = counterpart, None
    elif room_type == RoomType.DISCUSSION.value:  # named after the room like a channel, but no roles (SYSTEM.md §4)
        name, roles = room_name, None
    else:
        name, roles = room_name, list(OWNER_ROLES if is_owner else MEMBER_ROLES)
    return Subscription(
        id=sub_id,
        u=SubscriptionUser(id=user_id, account=account, is_bot=is_bot(account)),
        room_id=room_id,
        site_id=home_site,
        room_type=room_type,
        name=name,
        roles=roles,
        is_subscribed=room_type == RoomType.BOT_DM.value and not is_bot(account),
        joined_at=joined_at,
        history_shared_since=history_shared_since if history_shared_since > 0 else UNSET,
    )


def subscription_from_event(event: MemberAddEvent, *, account: str, user_id: str, sub_id: str) -> Subscription:
    """A remote site's mirror of `account`'s membership, shaped from the event alone (SYSTEM.md §4)."""
    room_type = effective_room_type(event)
    hss = event.history_shared_since
    return subscription_for(
        sub_id=sub_id,
        user_id=user_id,
        account=account,
        room_id=event.room_id,
        room_type=room_type,
        room_name=event.room_name,
        home_site=event.site_id,
        counterpart=counterpart_of(account, event.accounts, event.requester_account),
        is_owner=False,
        joined_at=event.joined_at,
        history_shared_since=hss if isinstance(hss, int) else 0,
    )
