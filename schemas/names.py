"""Every name chatfed gives things, written once: flows, durables, streams, search aliases, databases, id rules.

Standard library only: `scripts/services.py` imports it (with `schemas/subjects.py`) under a bare python3,
before the venv exists. The subject *layout* lives in subjects.py; this module holds the *names*.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

# --- sites and identifiers

# lowercase letters, digits and '-', not starting with '-': a site id is a subject token, a JetStream
# domain, part of stream, index and database names, and a command-line argument
_SITE_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]*")
_BAD_TOKEN: Final = re.compile(r"[.*>\s]")
BOT_SUFFIX: Final = ".bot"


def is_valid_site_id(value: str) -> bool:
    """Whether `value` is a site id: lowercase letters, digits and `-`, not starting with `-`."""
    return _SITE_ID.fullmatch(value) is not None


def site_id(value: str) -> str:
    """`value`, or ValueError when it is not a site id."""
    if not is_valid_site_id(value):
        msg = f"invalid site id {value!r}: lowercase letters, digits and '-' only"
        raise ValueError(msg)
    return value


def is_valid_token(value: str) -> bool:
    """Whether `value` can be one subject token: non-empty, no `.`, `*`, `>` or whitespace."""
    return bool(value) and _BAD_TOKEN.search(value) is None


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


# --- flows and their durables

# flow ids: the module under dataflows/, the token of their dead-letter subject, process and log names
ROOM_WORKER_FLOW: Final = "room_worker"
INBOX_MIRROR_FLOW: Final = "inbox_mirror"
SEARCH_SYNC_FLOW: Final = "search_sync"
FLOWS: Final = (ROOM_WORKER_FLOW, INBOX_MIRROR_FLOW, SEARCH_SYNC_FLOW)  # start order: producers first


def flow_module(flow: str) -> str:
    """`dataflows.{flow}`: what `python -m bytewax.run` runs."""
    if flow not in FLOWS:
        msg = f"unknown flow {flow!r}: expected one of {', '.join(FLOWS)}"
        raise ValueError(msg)
    return f"dataflows.{flow}"


# durable consumers, named as the Go services name theirs
ROOM_WORKER_DURABLE: Final = "room-worker"
INBOX_WORKER_DURABLE: Final = "inbox-worker"
SEARCH_SYNC_DURABLE: Final = "search-sync"
# the durable each flow reads by default (a search index rebuild points search_sync at a temporary one)
FLOW_DURABLES: Final = {
    ROOM_WORKER_FLOW: ROOM_WORKER_DURABLE,
    INBOX_MIRROR_FLOW: INBOX_WORKER_DURABLE,
    SEARCH_SYNC_FLOW: SEARCH_SYNC_DURABLE,
}


# --- streams


class PerSite(NamedTuple):
    """A name made from a site id: `PerSite("ROOMS_{}")("s1") == "ROOMS_s1"` (ValueError for a bad site id)."""

    pattern: str

    def __call__(self, site: str) -> str:
        return self.pattern.format(site_id(site))


rooms_stream: Final = PerSite("ROOMS_{}")  # room commands, read by room_worker
outbox_stream: Final = PerSite("OUTBOX_{}")  # what the site publishes for the others (they source it)
inbox_stream: Final = PerSite("INBOX_{}")  # the site's events, local and aggregate lanes: inbox_mirror, search_sync
dlq_stream: Final = PerSite("DLQ_{}")  # dead letters of every flow of the site
# on OUTBOX_{origin}, the durable that INBOX_{dest} sources through: created by the origin, only bound by the destination
outbox_source_durable: Final = PerSite("fed-to-{}")

_FLOW_STREAMS: Final = {ROOM_WORKER_FLOW: rooms_stream, INBOX_MIRROR_FLOW: inbox_stream, SEARCH_SYNC_FLOW: inbox_stream}


def flow_stream(site: str, flow: str) -> str:
    """The stream `flow`'s durable reads on `site` (KeyError for an unknown flow)."""
    return _FLOW_STREAMS[flow](site)


# --- stores

# default aliases of the search views (CHATFED_USER_ROOM_INDEX, _SPOTLIGHT_INDEX, _ROOM_NAMES_INDEX override them)
user_room_alias: Final = PerSite("user-room-{}")
spotlight_alias: Final = PerSite("spotlight-{}")
room_names_alias: Final = PerSite("room-names-{}")
mongo_database: Final = PerSite("chat_{}")  # the site's default MongoDB database (CHATFED_MONGO_DB)
