"""JetStream pull source, the settle sink (ack / delayed nak / dead-letter) and deduplicated publishes."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Final

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import FlushTimeoutError
from nats.js.errors import APIError
from typing_extensions import override

from connectors import metrics, natsio, progress
from connectors.settings import NatsSettings, Tuning
from schemas import carriers
from schemas.carriers import Delivery, Settle, Verdict

log = logging.getLogger(__name__)

_STATUS: Final = "Status"
_PENDING_MSGS: Final = "Nats-Pending-Messages"
_IDLE_POLL: Final = timedelta(milliseconds=5)


def parse_ack_reply(reply: str) -> tuple[str, int, int]:
    """(stream, stream sequence, delivery count) from a `$JS.ACK...` reply subject (v1 or v2 form); ValueError otherwise."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        msg = f"not a JetStream ack subject: {reply!r}"
        raise ValueError(msg)
    if len(tokens) == 9:  # $JS.ACK.stream.consumer.delivered.sseq.cseq.ts.pending
        return tokens[2], int(tokens[5]), int(tokens[4])
    # $JS.ACK.domain.acchash.stream.consumer.delivered.sseq.cseq.ts.pending[.token]
    return tokens[4], int(tokens[7]), int(tokens[6])


def backoff_ms(num_delivered: int, tuning: Tuning) -> int:
    """Delay before redelivery, doubling with each delivery: a plain nak burns max_deliver (FINDINGS)."""
    exponent = min(max(num_delivered - 1, 0), 20)
    return int(min(tuning.backoff_base_ms * (2**exponent), tuning.backoff_max_ms))


class _PullState:
    """Bookkeeping of one continuous pull; touched only on the NATS loop."""

    def __init__(self) -> None:
        self.credit = 0  # messages asked for and not yet delivered or expired
        self.last_seen = time.monotonic()


class _JetStreamPartition(StatelessSourcePartition[Delivery]):
    def __init__(self, nats: NatsSettings, tuning: Tuning, stream: str, durable: str, max_batch: int) -> None:
        self._nats = nats
        self._tuning = tuning
        self._max_batch = max_batch
        self._stream = stream
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._error: BaseException | None = None
        self._state = _PullState()
        self._client: Client = natsio.connection(nats)
        self._progress = progress.shared(self._client, tuning.ack_wait_s, flow=durable)
        self._inbox = self._client.new_inbox()
        natsio.run(self._client.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1))
        self._pump = asyncio.run_coroutine_threadsafe(self._keep_pulling(), natsio.loop())

    async def _on_msg(self, msg: Msg) -> None:
        state = self._state
        state.last_seen = time.monotonic()
        headers = msg.headers
        if headers and _STATUS in headers and not msg.data:
            status = headers[_STATUS]
            if status == "100":  # idle heartbeat: the pull is alive
                return
            # 404/408/409: the request ended; the server says how many it did not fill
            unfilled = headers.get(_PENDING_MSGS)
            state.credit = max(state.credit - int(unfilled), 0) if unfilled else 0
            if status not in {"404", "408", "409"}:
                log.warning("pull on %s: status %s %s", self._next_subject, status, headers.get("Description", ""))
            return
        state.credit = max(state.credit - 1, 0)
        try:
            stream, seq, delivered = parse_ack_reply(msg.reply)
        except ValueError:
            log.error("dropping non-JetStream message on pull inbox: subject=%s", msg.subject)
            return
        delivery = Delivery(
            # one copy of each subject and stream name for every message in flight (up to max_ack_pending; issue 12)
            subject=sys.intern(msg.subject),
            data=msg.data,
            reply=msg.reply,
            stream=sys.intern(stream),
            stream_seq=seq,
            num_delivered=delivered,
            headers=dict(headers) if headers else None,
            received_ms=int(time.time() * 1000),
            holder=self._progress.holder,
        )
        self._progress.hold(delivery)  # until settled: a long wait anywhere in the flow must not cost a redelivery
        self._buffer.append(delivery)

    async def _keep_pulling(self) -> None:
        tuning = self._tuning
        state = self._state
        batch = tuning.pull_batch
        expires_ns = tuning.pull_expires_ms * 1_000_000
        heartbeat_ns = tuning.pull_heartbeat_ms * 1_000_000
        stale_after = 2 * tuning.pull_heartbeat_ms / 1000 + 1
        try:
            while True:
                if not self._client.is_connected or time.monotonic() - state.last_seen > stale_after:
                    state.credit = 0  # requests died with the connection or went silent
                    state.last_seen = time.monotonic()
                if self._client.is_connected and state.credit <= batch // 2 and len(self._buffer) < tuning.max_buffered:
                    request = {"batch": batch, "expires": expires_ns, "idle_heartbeat": heartbeat_ns}
                    await self._client.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)
                    state.credit += batch
                    continue
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced from next_batch: a thread's errors are invisible otherwise
            self._error = exc
            raise

    @override
    def next_batch(self) -> list[Delivery]:
        if self._error is not None:
            raise self._error
        natsio.check_permissions(self._nats)
        if self._pump.done() and not self._pump.cancelled():
            self._pump.result()
        buffer = self._buffer
        count = min(len(buffer), self._max_batch)
        return [buffer.popleft() for _ in range(count)]

    @override
    def next_awake(self) -> datetime | None:
        if self._buffer:
            return None
        return datetime.now(timezone.utc) + _IDLE_POLL

    @override
    def close(self) -> None:
        self._pump.cancel()


class JetStreamSource(DynamicSource[Delivery]):
    """Every worker pulls continuously from the same durable consumer; JetStream spreads the messages.

    `next_batch` hands Bytewax at most `max_batch` deliveries (default `4 * pull_batch`). A flow that
    coalesces per document passes more (up to `max_buffered`): whatever piled up while it was writing
    then arrives in one batch and is written as one, so a backlog coalesces instead of being written
    in small slices.
    """

    def __init__(self, nats: NatsSettings, tuning: Tuning, *, stream: str, durable: str, max_batch: int | None = None) -> None:
        self._nats = nats
        self._tuning = tuning
        self._stream = stream
        self._durable = durable
        self._max_batch = max_batch or tuning.pull_batch * 4

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JetStreamPartition:
        return _JetStreamPartition(self._nats, self._tuning, self._stream, self._durable, self._max_batch)


def dead_letter_headers(settle: Settle, flow: str) -> dict[str, str]:
    """Headers of the dead-letter copy: the original's own headers (a replay needs them), why, and where it lived."""
    delivery = settle.delivery
    original = delivery.headers or {}
    headers = {key: value for key, value in original.items() if not key.startswith("Nats-")}
    if "Nats-Stream-Source" in original:
        headers[carriers.DLQ_STREAM_SOURCE] = original["Nats-Stream-Source"]
    headers |= {
        carriers.DLQ_REASON: " ".join(settle.reason.split())[:1024] or "unspecified",  # headers are one line
        carriers.DLQ_SUBJECT: delivery.subject,
        carriers.DLQ_STREAM: delivery.stream,
        carriers.DLQ_SEQUENCE: str(delivery.stream_seq),
        carriers.DLQ_DELIVERIES: str(delivery.num_delivered),
        carriers.DLQ_FLOW: flow,
        # one dead letter per original message, even if the dead-lettering itself is retried
        "Nats-Msg-Id": f"dlq:{flow}:{delivery.stream}:{delivery.stream_seq}",
    }
    original_id = original.get("Nats-Msg-Id")
    if original_id:
        headers[carriers.DLQ_ORIGINAL_MSG_ID] = original_id
    return headers


class _SettlePartition(StatelessSinkPartition[Settle]):
    def __init__(self, nats: NatsSettings, tuning: Tuning, flow: str, dlq_subject: str) -> None:
        self._nats = nats
        self._client = natsio.connection(nats)
        self._js = self._client.jetstream()
        self._tuning = tuning
        self._progress = progress.shared(self._client, tuning.ack_wait_s, flow=flow, names_flow=True)
        self._flow = flow
        self._dlq_subject = dlq_subject

    async def _settle(self, items: Sequence[Settle]) -> dict[str, int]:
        publish = self._client.publish
        dead: list[Settle] = []
        outcomes = {"ack": 0, "retry": 0, "dead": 0}
        for item in items:
            delivery = item.delivery
            if item.verdict is Verdict.ACK:
                await publish(delivery.reply, b"+ACK")
                outcomes["ack"] += 1
            elif item.verdict is Verdict.RETRY and delivery.num_delivered < self._tuning.max_deliver:
                delay_ns = backoff_ms(delivery.num_delivered, self._tuning) * 1_000_000
                await publish(delivery.reply, b"-NAK " + json.dumps({"delay": delay_ns}).encode())
                outcomes["retry"] += 1
            else:  # poison, or a transient failure on its last delivery
                dead.append(item)
        if dead:
            results = await asyncio.gather(*(self._dead_letter(item) for item in dead))
            outcomes["dead"] = sum(results)
        await self._progress.settled(item.delivery for item in items)  # acked, nak'd or left for redelivery: no more +WPI
        try:
            await self._client.flush()
        except FlushTimeoutError:
            # the server dropped while we waited for its PONG (the pending PONG is discarded on reconnect):
            # an ack that got lost only means a redelivery, which every write tolerates
            log.warning("%s: ack flush timed out during a reconnect; unconfirmed acks will be redelivered", self._flow)
            metrics.UNCONFIRMED_ACK_FLUSHES.labels(self._flow).inc()
        return outcomes

    async def _dead_letter(self, item: Settle) -> bool:
        headers = dead_letter_headers(item, self._flow)
        try:
            await self._js.publish(self._dlq_subject, item.delivery.data, headers=headers, timeout=10)
        except (APIError, NatsError) as exc:  # refused, or NATS away: the original stays un-acked
            log.warning("dead-lettering %s:%s failed (%r); leaving it for redelivery", item.delivery.stream, item.delivery.stream_seq, exc)
            return False  # not acked: JetStream redelivers it after ack_wait
        log.warning(
            "dead-lettered %s seq %s (%s): %s",
            item.delivery.stream,
            item.delivery.stream_seq,
            item.delivery.subject,
            headers[carriers.DLQ_REASON],
        )
        await self._client.publish(item.delivery.reply, b"+ACK")
        return True

    @override
    def write_batch(self, items: list[Settle]) -> None:
        outcomes = natsio.run(self._settle(items), timeout=60)
        natsio.check_permissions(self._nats)  # a refused ack or dead letter would loop forever otherwise
        metrics.record_settled(self._flow, outcomes, (item.event_ms for item in items if item.verdict is Verdict.ACK))
        metrics.count_ignored(self._flow, sum(item.ignored for item in items))


class SettleSink(DynamicSink[Settle]):
    """Ack what succeeded, nak with a growing delay what may succeed later, dead-letter the rest."""

    def __init__(self, nats: NatsSettings, tuning: Tuning, *, flow: str, dlq_subject: str) -> None:
        self._nats = nats
        self._tuning = tuning
        self._flow = flow
        self._dlq_subject = dlq_subject

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SettlePartition:
        return _SettlePartition(self._nats, self._tuning, self._flow, self._dlq_subject)


class PublishRejected(RuntimeError):
    """JetStream did not store a publish."""


async def publish_all(client: Client, messages: Iterable[tuple[str, bytes, str]], timeout: float = 10) -> list[bool]:
    """Publish (subject, data, msg_id) triples to JetStream concurrently; True where it was a duplicate."""
    js = client.jetstream()

    async def one(subject: str, data: bytes, msg_id: str) -> bool:
        ack = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=timeout)
        return bool(ack.duplicate)

    return list(await asyncio.gather(*(one(*message) for message in messages)))
