"""The composite operators the flows share: decode or settle at once, coalesce per key, join the parts' outcomes.

A message fans out into parts that may be written by other workers. Each part carries only the message's
small `AckHandle`; the message itself (raw bytes and all) goes once, as an `Awaiting`, to `settle_parts`,
where the parts' `PartOutcome`s meet it, keyed by its reply subject, in whatever order they arrive. The join
state is only un-acked work: if it is lost in a crash the message is simply redelivered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeGuard, TypeVar, cast

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from typing_extensions import override

from schemas.carriers import AckHandle, Delivery, Settle, done, retry

P = TypeVar("P")  # a part of a message
V = TypeVar("V")  # a message's verdict at decode (a `Settle`, or what the flow settles it from)


class PartOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one part of the message `ack` names."""

    ack: AckHandle
    ok: bool
    reason: str = ""


class Awaiting(msgspec.Struct, frozen=True, kw_only=True):
    """A message whose `parts` parts are on their way to be written: `settle_parts` settles it once they reported."""

    delivery: Delivery
    parts: int


@dataclass(frozen=True)
class Decoded(Generic[P, V]):
    """`decode_or_dead_letter`'s streams (a dataclass: Bytewax re-scopes its fields to the caller's steps)."""

    parts: Stream[P]  # every part of every message that has parts
    settled: Stream[V]  # the messages decided at decode (poison, ignored, nothing to do)
    awaiting: Stream[Awaiting]  # each message with parts, once: for `settle_parts`


def _has_parts(pair: tuple[Delivery, list[P] | V]) -> TypeGuard[tuple[Delivery, list[P]]]:
    return isinstance(pair[1], list)


def _verdict(pair: tuple[Delivery, list[P] | V]) -> V:
    return cast(V, pair[1])  # branch narrows only the true side


def _awaiting(pair: tuple[Delivery, list[P]]) -> Awaiting:
    return Awaiting(delivery=pair[0], parts=len(pair[1]))


@operator
def decode_or_dead_letter(step_id: str, deliveries: Stream[Delivery], decode: Callable[[Delivery], list[P] | V]) -> Decoded[P, V]:
    """Decode each delivery into its parts, or into its verdict (a poison `Settle`) when it can never be applied.

    A message with no parts goes to `awaiting` all the same: `settle_parts` acks it at once.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from schemas.carriers import Delivery, poison
    >>> def msg(seq, data):
    ...     return Delivery(subject="s", data=data, reply=f"r{seq}", stream="S", stream_seq=seq, num_delivered=1)
    >>> def decode(delivery):
    ...     text = delivery.data.decode()
    ...     return text.split(",") if text.isascii() else poison(delivery, "not ascii")
    >>> flow = Dataflow("decode_eg")
    >>> msgs = op.input("pull", flow, TestingSource([msg(1, b"a,b"), msg(2, "é".encode())]))
    >>> decoded = decode_or_dead_letter("decode", msgs, decode)
    >>> got_parts, got_settled, got_awaiting = [], [], []
    >>> op.output("parts", decoded.parts, TestingSink(got_parts))
    >>> op.output("settled", op.map("why", decoded.settled, lambda s: (s.delivery.reply, s.reason)), TestingSink(got_settled))
    >>> op.output("awaiting", op.map("count", decoded.awaiting, lambda a: (a.delivery.reply, a.parts)), TestingSink(got_awaiting))
    >>> run_main(flow)
    >>> got_parts, got_settled, got_awaiting
    (['a', 'b'], [('r2', 'not ascii')], [('r1', 2)])

    Args:
        step_id: Unique ID.
        deliveries: The pulled messages.
        decode: Pure: a message's parts (a list, maybe empty), or its verdict.

    Returns:
        The parts, the messages settled at decode, and the messages awaiting their parts.
    """
    decoded = op.map("decode", deliveries, lambda delivery: (delivery, decode(delivery)))
    split = op.branch("split_settled", decoded, _has_parts)
    return Decoded(
        parts=op.flat_map("fan_out", split.trues, lambda pair: pair[1]),
        settled=op.map("verdict", split.falses, _verdict),
        awaiting=op.map("awaiting", split.trues, _awaiting),
    )


class _JoinState(msgspec.Struct, kw_only=True):
    delivery: Delivery | None = None  # held from its arrival until it is settled
    parts: int = -1  # -1: outcomes came first, the message is still on its way
    seen: int = 0
    event_ms: int = 0
    failure: str | None = None


class _JoinLogic(StatefulBatchLogic[Awaiting | PartOutcome, Settle, _JoinState]):
    """Ack once every part succeeded; nak as soon as one failed (the rest are then only counted, then forgotten)."""

    def __init__(self, state: _JoinState | None) -> None:
        self.state = state or _JoinState()

    @override
    def on_batch(self, values: list[Awaiting | PartOutcome]) -> tuple[Iterable[Settle], bool]:
        state = self.state
        for value in values:
            if isinstance(value, Awaiting):
                state.delivery, state.parts = value.delivery, value.parts
            else:
                state.seen += 1
                state.event_ms = max(state.event_ms, value.ack.event_ms)
                if not value.ok and state.failure is None:
                    state.failure = value.reason
        if state.parts < 0:
            return [], StatefulBatchLogic.RETAIN
        out: list[Settle] = []
        if state.failure is not None and state.delivery is not None:
            out.append(retry(state.delivery, state.failure))
            state.delivery = None  # settled: the state shrinks to the count of parts still to come
        if state.seen >= state.parts:
            if state.delivery is not None:
                out.append(done(state.delivery, state.event_ms))
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> _JoinState:
        return msgspec.structs.replace(self.state)


def _reply_of(item: Awaiting | PartOutcome) -> str:
    return item.delivery.reply if isinstance(item, Awaiting) else item.ack.reply


@operator
def settle_parts(step_id: str, awaiting: Stream[Awaiting], outcomes: Stream[PartOutcome]) -> Stream[Settle]:
    """One `Settle` per awaiting message: ACK once all of its parts succeeded, RETRY as soon as one failed.

    The message and its parts' outcomes meet on one worker (keyed by reply subject) in any order.

    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from schemas.carriers import AckHandle, Delivery
    >>> def msg(seq):
    ...     return Delivery(subject="s", data=b"{}", reply=f"r{seq}", stream="S", stream_seq=seq, num_delivered=1)
    >>> flow = Dataflow("settle_parts_eg")
    >>> messages = [Awaiting(delivery=msg(1), parts=2), Awaiting(delivery=msg(2), parts=2), Awaiting(delivery=msg(3), parts=0)]
    >>> r1, r2 = AckHandle(reply="r1", event_ms=7), AckHandle(reply="r2")
    >>> reports = [PartOutcome(ack=r1, ok=True), PartOutcome(ack=r2, ok=False, reason="down"), PartOutcome(ack=r1, ok=True), PartOutcome(ack=r2, ok=True)]
    >>> settled = settle_parts("join", op.input("messages", flow, TestingSource(messages)), op.input("outcomes", flow, TestingSource(reports)))
    >>> out = []
    >>> op.output("out", op.map("show", settled, lambda s: (s.delivery.stream_seq, s.verdict.value, s.reason, s.event_ms)), TestingSink(out))
    >>> run_main(flow)
    >>> sorted(out)
    [(1, 'ack', '', 7), (2, 'retry', 'down', 0), (3, 'ack', '', 0)]

    Args:
        step_id: Unique ID.
        awaiting: Each message with its count of parts (from `decode_or_dead_letter`).
        outcomes: One `PartOutcome` per part.

    Returns:
        The settled messages.
    """
    merged: Stream[Awaiting | PartOutcome] = op.merge("merge", awaiting, outcomes)
    joined = op.stateful_batch("join_parts", op.key_on("key_by_message", merged, _reply_of), _JoinLogic)
    return op.key_rm("unkey", joined)


class _CollectState(msgspec.Struct, kw_only=True):
    items: list[object] = msgspec.field(default_factory=list)
    deadline: datetime | None = None


def next_tick(now: datetime, every: timedelta) -> datetime:
    """The first multiple of `every` (counted from the Unix epoch) after `now`: within `every` of it."""
    step = every.total_seconds()
    return datetime.fromtimestamp((math.floor(now.timestamp() / step) + 1) * step, tz=now.tzinfo or UTC)


class _CollectLogic(StatefulBatchLogic[object, list[object], _CollectState]):
    """Gather a key's items until `max_size` or until the first `timeout` tick after the first one (not the last).

    Deadlines fall on a shared grid, so every key of a worker that is waiting flushes in the same activation
    and is written in one bulk (per-key deadlines made a write per few keys), and a lone item waits
    `timeout / 2` on average instead of all of it.
    """

    def __init__(self, state: _CollectState | None, timeout: timedelta, max_size: int, now: Callable[[], datetime]) -> None:
        self.state = state or _CollectState()
        self.timeout = timeout
        self.max_size = max_size
        self.now = now

    @override
    def on_batch(self, values: list[object]) -> tuple[Iterable[list[object]], bool]:
        state = self.state
        if state.deadline is None:
            state.deadline = next_tick(self.now(), self.timeout)
        state.items.extend(values)
        if len(state.items) >= self.max_size:
            return [state.items], StatefulBatchLogic.DISCARD
        return [], StatefulBatchLogic.RETAIN

    @override
    def on_notify(self) -> tuple[Iterable[list[object]], bool]:
        return [self.state.items], StatefulBatchLogic.DISCARD

    @override
    def on_eof(self) -> tuple[Iterable[list[object]], bool]:
        return [self.state.items], StatefulBatchLogic.DISCARD

    @override
    def notify_at(self) -> datetime | None:
        return self.state.deadline

    @override
    def snapshot(self) -> _CollectState:
        return _CollectState(items=list(self.state.items), deadline=self.state.deadline)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@operator
def collect_for(step_id: str, up: KeyedStream[object], timeout: timedelta, max_size: int) -> KeyedStream[list[object]]:
    """Per key, a list of items flushed at `max_size` items, at EOF, or at the first tick of `timeout` after its first item.

    Ticks are multiples of `timeout`, the same for every key, so keys waiting together flush together.

    >>> from datetime import timedelta
    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> flow = Dataflow("collect_for_eg")
    >>> keyed = op.key_on("by_letter", op.input("in", flow, TestingSource(["a1", "b1", "a2", "a3"])), lambda item: item[0])
    >>> out = []
    >>> op.output("out", collect_for("coalesce", keyed, timedelta(seconds=5), 2), TestingSink(out))
    >>> run_main(flow)
    >>> sorted(out)
    [('a', ['a1', 'a2']), ('a', ['a3']), ('b', ['b1'])]
    """
    return op.stateful_batch("collect", up, lambda state: _CollectLogic(state, timeout, max_size, _utc_now))
