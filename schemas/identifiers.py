"""Identifier rules for ids that end up in subjects, document ids or index names (issue 7)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from schemas.subjects import is_valid_token

BOT_SUFFIX: Final = ".bot"


def is_valid_room_id(room_id: str) -> bool:
    """A room id is one subject token: non-empty, no `.`, `*`, `>` or whitespace."""
    return is_valid_token(room_id)


def is_valid_account(account: str) -> bool:
    """An account is one subject token, except that bots may end in `.bot` (SYSTEM.md §3)."""
    if account.endswith(BOT_SUFFIX):
        account = account[: -len(BOT_SUFFIX)]
    return is_valid_token(account)


def identifier_problem(*, room_ids: Iterable[str] = (), accounts: Iterable[str] = ()) -> str | None:
    """Why these ids are unusable (the first bad one), or None."""
    for room_id in room_ids:
        if not is_valid_room_id(room_id):
            return f"invalid room id {room_id!r}: needs a non-empty id without '.', '*', '>' or whitespace"
    for account in accounts:
        if not is_valid_account(account):
            return f"invalid account {account!r}: needs a non-empty name without '.', '*', '>' or whitespace (bots may end in '.bot')"
    return None
