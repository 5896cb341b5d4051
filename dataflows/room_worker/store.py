"""What room_worker needs from its store, and the store's sentinel errors; store_mongo.py is the one implementation.

`Lookups` is all the handler reads; `Store` adds the runner's batch reads and bookkeeping. An implementation
raises `StoreUnavailable` when its server is away or failing over (never its client's own error classes), so
`TRANSIENT` is the whole of what room_worker retries for its store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import msgspec

from dataflows.room_worker.outcomes import Outcome
from schemas.documents import Room, Subscription, User


class StoreUnavailable(RuntimeError):
    """The store could not be reached or answered with a transient error: retried, never dead-lettered at once."""


class IntentPending(RuntimeError):
    """Another command's intent holds the room (a concurrent run): retried, it is finished first."""


# everything the store raises that a retry can cure; anything else is a bug and stops the flow loudly
TRANSIENT: Final[tuple[type[Exception], ...]] = (StoreUnavailable, IntentPending)


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """One subscription of a room, as `Lookups.members` reads it."""

    user_id: str
    is_bot: bool
    roles: list[str]


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """An outcome and the run that decided it: a record with another run's nonce means another run answered."""

    outcome: Outcome
    nonce: str


class Lookups(Protocol):
    """The reads of deciding one command (handler.py)."""

    def users_by_accounts(self, accounts: Iterable[str]) -> dict[str, User]:
        """Users found for `accounts`, by account."""
        ...

    def org_members(self, orgs: Iterable[str]) -> list[User]:
        """Users whose `sectId` or `deptId` is one of `orgs`."""
        ...

    def room(self, room_id: str) -> Room | None:
        """The room, or `None`."""
        ...

    def members(self, room_id: str) -> dict[str, Member]:
        """The room's subscriptions by account."""
        ...

    def room_orgs(self, room_id: str) -> set[str]:
        """Ids of the orgs that are members of the room."""
        ...

    def individual_ids(self, room_id: str) -> set[str]:
        """User ids of the room's individual members."""
        ...

    def subscription(self, room_id: str, account: str) -> Subscription | None:
        """`account`'s whole subscription to the room, or `None`."""
        ...


class Store(Lookups, Protocol):
    """Lookups plus what the runner does around a decision: batch reads, intents, request records, writes."""

    def rooms(self, room_ids: Iterable[str]) -> dict[str, Room | None]:
        """Each room by id (`None`: no such room)."""
        ...

    def members_of(self, room_ids: Iterable[str]) -> dict[str, dict[str, Member]]:
        """`members` of each room."""
        ...

    def orgs_of(self, room_ids: Iterable[str]) -> dict[str, set[str]]:
        """`room_orgs` of each room."""
        ...

    def intent(self, room_id: str) -> Claim | None:
        """The room's decided but unfinished command, if any."""
        ...

    def rooms_with_intents(self, room_ids: Iterable[str]) -> set[str]:
        """Which of these rooms have an unfinished command."""
        ...

    def save_intent(self, claim: Claim, now_ms: int) -> None:
        """Make `claim` its room's pending command; `IntentPending` if the room has one."""
        ...

    def save_intents(self, claims: Sequence[Claim], now_ms: int) -> set[str]:
        """`save_intent` for commands of different rooms; returns the rooms that had one already."""
        ...

    def clear_intent(self, room_id: str) -> None:
        """Forget the room's pending command (carried out)."""
        ...

    def clear_intents(self, room_ids: Iterable[str]) -> None:
        """`clear_intent` for many rooms."""
        ...

    def record(self, claim: Claim, now_ms: int) -> Claim:
        """Record `claim` as its request's one answer unless one is recorded: return the recorded one."""
        ...

    def record_many(self, claims: Sequence[Claim], now_ms: int) -> dict[str, Claim]:
        """`record` for many requests; returns the answers recorded before, by request key."""
        ...

    def apply(self, outcome: Outcome, now_ms: int) -> None:
        """Carry out one outcome's writes (idempotent: a second run changes nothing)."""
        ...

    def apply_many(self, outcomes: Sequence[Outcome], now_ms: int) -> None:
        """`apply` for outcomes of different rooms."""
        ...
