"""Prometheus metrics shared by the flows (served by Bytewax's own `/metrics` and, optionally, our port)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS = Counter("chatfed_events_total", "Messages settled, by flow and outcome", ["flow", "outcome"])
UNCONFIRMED_ACK_FLUSHES = Counter(
    "chatfed_unconfirmed_ack_flushes_total", "Ack batches whose delivery the server could not confirm (reconnect)", ["flow"]
)
IN_PROGRESS = Gauge("chatfed_messages_in_progress", "Messages pulled by this process and not yet settled", ["flow"])
IN_PROGRESS_ACKS = Counter("chatfed_in_progress_acks_total", "+WPI sent for messages still being worked on", ["flow"])
DEAD_LETTERS = Counter("chatfed_dead_letters_total", "Messages sent to the dead-letter stream", ["flow"])
WRITE_SECONDS = Histogram(
    "chatfed_write_seconds",
    "Duration of one bulk write to a store",
    ["flow", "store"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WRITE_SIZE = Histogram(
    "chatfed_write_size",
    "Operations in one bulk write",
    ["flow", "store"],
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000),
)
IGNORED_EVENTS = Counter("chatfed_ignored_events_total", "Messages acked without a write (unknown type or subject)", ["flow"])
EVENT_AGE_SECONDS = Histogram(
    "chatfed_event_to_ack_seconds",
    "Time from the envelope timestamp to the acknowledged write",
    ["flow"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def record_settled(flow: str, outcomes: dict[str, int], event_ms: Iterable[int]) -> None:
    """Count settled messages by outcome (`ack`, `retry`, `dead`) and observe event-to-ack latency."""
    for outcome, count in outcomes.items():
        if count:
            EVENTS.labels(flow, outcome).inc(count)
    if outcomes.get("dead"):
        DEAD_LETTERS.labels(flow).inc(outcomes["dead"])
    now_ms = time.time() * 1000
    for ms in event_ms:
        if ms > 0:
            EVENT_AGE_SECONDS.labels(flow).observe(max(now_ms - ms, 0) / 1000)


def count_ignored(flow: str, count: int) -> None:
    """Messages acknowledged without any write because the flow has no use for them (SYSTEM.md §4: unknown types)."""
    if count:
        IGNORED_EVENTS.labels(flow).inc(count)


def observe_write(flow: str, store: str, size: int, seconds: float) -> None:
    WRITE_SIZE.labels(flow, store).observe(size)
    WRITE_SECONDS.labels(flow, store).observe(seconds)


def serve(port: int) -> None:
    """Expose /metrics on `port` (0: do nothing)."""
    if port:
        start_http_server(port, addr="127.0.0.1")
