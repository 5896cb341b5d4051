"""The subject layout of SYSTEM.md §1: builders (which reject invalid tokens), filters and parsers.

Standard library only: scripts/ builds the NATS permissions from these filters. Names (streams, durables,
the site-id and token rules) live in schemas/names.py.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal, NamedTuple, TypeAlias

from schemas.names import is_valid_site_id, is_valid_token, site_id

AGGREGATE: Final = "aggregate"
# where the origin's JetStream delivers what a destination's INBOX sources from its OUTBOX
SOURCE_DELIVER_ROOT: Final = "fed.deliver"
# notices between the processes of one flow: a reply-inbox subject, which the service user may publish
RELEASE_PREFIX: Final = "_INBOX.release."

Lane: TypeAlias = Literal["local", "aggregate"]


class RoomOp(StrEnum):
    """Suffix of a room command subject."""

    CREATE = "create"
    MEMBER_ADD = "member.add"
    MEMBER_REMOVE = "member.remove"
    MEMBER_ROLE_UPDATE = "member.role-update"
    RENAME = "rename"


_ROOM_OPS: Final = frozenset(op.value for op in RoomOp)


class InboxSubject(NamedTuple):
    """A parsed INBOX subject."""

    site: str
    lane: Lane
    event_type: str


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
    return f"chat.room.canonical.{site_id(site)}.{op}"


def rooms_filter(site: str) -> str:
    """`chat.room.canonical.{site}.>`: every room command of a site."""
    return f"chat.room.canonical.{site_id(site)}.>"


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
    return f"outbox.{site_id(origin)}.to.{site_id(dest)}.{_event_type(event_type)}"


def outbox_filter(origin: str) -> str:
    """`outbox.{origin}.>`: everything in `OUTBOX_{origin}`."""
    return f"outbox.{site_id(origin)}.>"


def outbox_to_filter(*, origin: str, dest: str) -> str:
    """`outbox.{origin}.to.{dest}.>`: what `INBOX_{dest}` sources from `OUTBOX_{origin}`."""
    return f"outbox.{site_id(origin)}.to.{site_id(dest)}.>"


def inbox_local(site: str, event_type: str) -> str:
    """`chat.inbox.{site}.{type}`: the local lane."""
    return f"chat.inbox.{site_id(site)}.{_event_type(event_type)}"


def inbox_local_filter(site: str) -> str:
    """`chat.inbox.{site}.*`: the whole local lane."""
    return f"chat.inbox.{site_id(site)}.*"


def inbox_aggregate(site: str, event_type: str) -> str:
    """`chat.inbox.{site}.aggregate.{type}`: the federated lane."""
    return f"chat.inbox.{site_id(site)}.{AGGREGATE}.{_event_type(event_type)}"


def inbox_aggregate_filter(site: str) -> str:
    """`chat.inbox.{site}.aggregate.>`: the whole federated lane."""
    return f"chat.inbox.{site_id(site)}.{AGGREGATE}.>"


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
    return f"chat.dlq.{site_id(site)}.{_token(flow, 'flow')}"


def dlq_filter(site: str) -> str:
    """`chat.dlq.{site}.>`: every dead letter of a site."""
    return f"chat.dlq.{site_id(site)}.>"


def command_result(*, account: str, request_id: str) -> str:
    """`chat.user.{account}.response.{requestId}`: where a command's result goes."""
    return f"chat.user.{_token(account, 'account')}.response.{_token(request_id, 'request id')}"


def subscription_update(account: str) -> str:
    """`chat.user.{account}.event.subscription.update`: the core-NATS notice of a changed subscription."""
    return f"chat.user.{_token(account, 'account')}.event.subscription.update"


def subscription_update_filter() -> str:
    """`chat.user.*.event.subscription.update`: every account's subscription notices."""
    return "chat.user.*.event.subscription.update"


def command_result_filter() -> str:
    """`chat.user.*.response.*`: every command result, of any account and request."""
    return "chat.user.*.response.*"


def release_filter() -> str:
    """`_INBOX.release.>`: every settle notice between a flow's processes (subjects under `RELEASE_PREFIX`)."""
    return f"{RELEASE_PREFIX}>"


def jetstream_api_prefix(domain: str) -> str:
    """`$JS.{domain}.API`: a site's JetStream API as other sites reach it (domain = site id)."""
    return f"$JS.{site_id(domain)}.API"


def source_deliver_prefix(*, origin: str, dest: str) -> str:
    """`fed.deliver.{origin}.to.{dest}`: where `origin` delivers what `INBOX_{dest}` sources from `OUTBOX_{origin}`."""
    return f"{SOURCE_DELIVER_ROOT}.{site_id(origin)}.to.{site_id(dest)}"


def source_deliver_subject(*, origin: str, dest: str) -> str:
    """`fed.deliver.{origin}.to.{dest}.durable`: the deliver subject of the origin's source durable for `dest`."""
    return f"{source_deliver_prefix(origin=origin, dest=dest)}.durable"


def source_deliver_filter(*, origin: str, dest: str) -> str:
    """`fed.deliver.{origin}.to.{dest}.>`: every delivery of that source."""
    return f"{source_deliver_prefix(origin=origin, dest=dest)}.>"
