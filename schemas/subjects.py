"""Subject, stream and durable names (SYSTEM.md §1); builders reject invalid tokens."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final, Literal, NamedTuple, TypeAlias

ROOM_WORKER: Final = "room-worker"
INBOX_WORKER: Final = "inbox-worker"
SEARCH_SYNC: Final = "search-sync"

AGGREGATE: Final = "aggregate"

Lane: TypeAlias = Literal["local", "aggregate"]

_SITE_ID: Final = re.compile(r"[a-z0-9-]+")
_BAD_TOKEN: Final = re.compile(r"[.*>\s]")


class RoomOp(StrEnum):
    """Suffix of a room command subject."""

    CREATE = "create"
    MEMBER_ADD = "member.add"
    MEMBER_REMOVE = "member.remove"


_ROOM_OPS: Final = frozenset(op.value for op in RoomOp)


class InboxSubject(NamedTuple):
    """A parsed INBOX subject."""

    site: str
    lane: Lane
    event_type: str


def is_valid_token(value: str) -> bool:
    """Whether `value` can be one subject token: non-empty, no `.`, `*`, `>` or whitespace."""
    return bool(value) and _BAD_TOKEN.search(value) is None


def is_valid_site_id(value: str) -> bool:
    """Whether `value` is a site id: lowercase letters, digits and `-`."""
    return _SITE_ID.fullmatch(value) is not None


def _site(value: str) -> str:
    if not is_valid_site_id(value):
        msg = f"invalid site id {value!r}: lowercase letters, digits and '-' only"
        raise ValueError(msg)
    return value


def _token(value: str, what: str) -> str:
    if not is_valid_token(value):
        msg = f"invalid {what} {value!r}: must be one non-empty subject token"
        raise ValueError(msg)
    return value


def _event_type(value: str) -> str:
    _token(value, "event type")
    if value == AGGREGATE:
        # `chat.inbox.{site}.aggregate` would read as the federated lane's prefix
        msg = f"invalid event type {value!r}: reserved lane name"
        raise ValueError(msg)
    return value


def rooms_command(site: str, op: str) -> str:
    """`chat.room.canonical.{site}.{op}`, op being a `RoomOp`."""
    if op not in _ROOM_OPS:
        msg = f"invalid room op {op!r}: expected one of {sorted(_ROOM_OPS)}"
        raise ValueError(msg)
    return f"chat.room.canonical.{_site(site)}.{op}"


def rooms_filter(site: str) -> str:
    """`chat.room.canonical.{site}.>`: every room command of a site."""
    return f"chat.room.canonical.{_site(site)}.>"


def parse_rooms_command(subject: str) -> tuple[str, RoomOp] | None:
    """Return `(site, op)` of a room command subject, or `None` for anything else."""
    prefix = "chat.room.canonical."
    if not subject.startswith(prefix):
        return None
    site, _, op = subject[len(prefix) :].partition(".")
    if not is_valid_site_id(site) or op not in _ROOM_OPS:
        return None
    return site, RoomOp(op)


def outbox(*, origin: str, dest: str, event_type: str) -> str:
    """`outbox.{origin}.to.{dest}.{type}`: a cross-site publish."""
    return f"outbox.{_site(origin)}.to.{_site(dest)}.{_event_type(event_type)}"


def outbox_filter(origin: str) -> str:
    """`outbox.{origin}.>`: everything in `OUTBOX_{origin}`."""
    return f"outbox.{_site(origin)}.>"


def outbox_to_filter(*, origin: str, dest: str) -> str:
    """`outbox.{origin}.to.{dest}.>`: what `INBOX_{dest}` sources from `OUTBOX_{origin}`."""
    return f"outbox.{_site(origin)}.to.{_site(dest)}.>"


def inbox_local(site: str, event_type: str) -> str:
    """`chat.inbox.{site}.{type}`: the local lane."""
    return f"chat.inbox.{_site(site)}.{_event_type(event_type)}"


def inbox_local_filter(site: str) -> str:
    """`chat.inbox.{site}.*`: the whole local lane."""
    return f"chat.inbox.{_site(site)}.*"


def inbox_aggregate(site: str, event_type: str) -> str:
    """`chat.inbox.{site}.aggregate.{type}`: the federated lane."""
    return f"chat.inbox.{_site(site)}.{AGGREGATE}.{_event_type(event_type)}"


def inbox_aggregate_filter(site: str) -> str:
    """`chat.inbox.{site}.aggregate.>`: the whole federated lane."""
    return f"chat.inbox.{_site(site)}.{AGGREGATE}.>"


def parse_inbox(subject: str) -> InboxSubject | None:
    """Split an INBOX subject into `(site, lane, event_type)`, or `None` if it is not one."""
    tokens = subject.split(".")
    if len(tokens) < 4 or tokens[0] != "chat" or tokens[1] != "inbox":
        return None
    site = tokens[2]
    if not is_valid_site_id(site):
        return None
    if len(tokens) == 4 and tokens[3] != AGGREGATE and is_valid_token(tokens[3]):
        return InboxSubject(site, "local", tokens[3])
    if len(tokens) == 5 and tokens[3] == AGGREGATE and is_valid_token(tokens[4]):
        return InboxSubject(site, "aggregate", tokens[4])
    return None


def dlq(site: str, flow: str) -> str:
    """`chat.dlq.{site}.{flow}`: dead letters of one dataflow."""
    return f"chat.dlq.{_site(site)}.{_token(flow, 'flow')}"


def dlq_filter(site: str) -> str:
    """`chat.dlq.{site}.>`: every dead letter of a site."""
    return f"chat.dlq.{_site(site)}.>"


def command_result(*, account: str, request_id: str) -> str:
    """`chat.user.{account}.response.{requestId}`: where a command's result goes."""
    return f"chat.user.{_token(account, 'account')}.response.{_token(request_id, 'request id')}"


def rooms_stream(site: str) -> str:
    """`ROOMS_{site}`."""
    return f"ROOMS_{_site(site)}"


def outbox_stream(site: str) -> str:
    """`OUTBOX_{site}`."""
    return f"OUTBOX_{_site(site)}"


def inbox_stream(site: str) -> str:
    """`INBOX_{site}`."""
    return f"INBOX_{_site(site)}"


def dlq_stream(site: str) -> str:
    """`DLQ_{site}`."""
    return f"DLQ_{_site(site)}"
