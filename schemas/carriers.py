"""Plain-data items that travel through the dataflows: a delivered message, the ack handle of its parts, and what became of it."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One JetStream message as pulled; `reply` is the ack handle (any connection may ack with it)."""

    subject: str
    data: bytes
    reply: str
    stream: str
    stream_seq: int
    num_delivered: int
    headers: dict[str, str] | None = None
    received_ms: int = 0  # when it was received (epoch ms): its ack wait runs from about then
    holder: str = ""  # where to send the notice that it was settled (connectors/progress.py)


class AckHandle(msgspec.Struct, frozen=True, kw_only=True):
    """What each part of a message carries instead of the message: whose part it is, for the join of their outcomes.

    A message with N parts is carried to its settle step once (connectors/operators.py), not once per part.
    """

    reply: str  # the message's reply subject: the join's key
    event_ms: int = 0  # envelope timestamp, for the event-to-ack latency metric; 0 when unknown


class Verdict(StrEnum):
    """What the settle sink does with a message."""

    ACK = "ack"  # every write derived from it is durable
    RETRY = "retry"  # transient failure: delayed nak, dead-letter on the last delivery
    DEAD = "dead"  # the message's own fault: dead-letter now, then ack


class Settle(msgspec.Struct, frozen=True, kw_only=True):
    """The final word on one delivery."""

    delivery: Delivery
    verdict: Verdict
    reason: str = ""
    event_ms: int = 0  # envelope timestamp, for the event-to-ack latency metric; 0 when unknown
    ignored: bool = False  # an ACK with nothing written because the flow has no use for it (unknown type): counted


def poison(delivery: Delivery, reason: str) -> Settle:
    """A message that can never succeed: it goes to the dead-letter stream with `reason`."""
    return Settle(delivery=delivery, verdict=Verdict.DEAD, reason=reason)


def done(delivery: Delivery, event_ms: int = 0) -> Settle:
    """A message whose writes are all durable."""
    return Settle(delivery=delivery, verdict=Verdict.ACK, event_ms=event_ms)


def ignored(delivery: Delivery, reason: str, event_ms: int = 0) -> Settle:
    """A message acknowledged without a write because the flow has no use for it (SYSTEM.md §4: unknown types)."""
    return Settle(delivery=delivery, verdict=Verdict.ACK, reason=reason, event_ms=event_ms, ignored=True)


def retry(delivery: Delivery, reason: str) -> Settle:
    """A message that hit a transient failure."""
    return Settle(delivery=delivery, verdict=Verdict.RETRY, reason=reason)


# Headers on a dead-lettered message (SYSTEM.md §6).
DLQ_REASON: Final = "Chatfed-Dlq-Reason"
DLQ_SUBJECT: Final = "Chatfed-Dlq-Subject"
DLQ_STREAM: Final = "Chatfed-Dlq-Stream"
DLQ_SEQUENCE: Final = "Chatfed-Dlq-Sequence"
DLQ_DELIVERIES: Final = "Chatfed-Dlq-Deliveries"
DLQ_FLOW: Final = "Chatfed-Dlq-Flow"
DLQ_ORIGINAL_MSG_ID: Final = "Chatfed-Dlq-Original-Msg-Id"
# The server refuses a publish carrying Nats-Stream-Source (err 10227), so the dead letter keeps it under
# this name, and a replay into the aggregate lane presents it as REPLAYED_STREAM_SOURCE; only a site's
# operator may publish there (NATS permissions), which is what makes the replayed origin trustworthy.
DLQ_STREAM_SOURCE: Final = "Chatfed-Dlq-Stream-Source"
REPLAYED_STREAM_SOURCE: Final = "Chatfed-Replayed-Stream-Source"
