"""Fan-in of per-part write outcomes into one verdict per message, and deadline-bounded coalescing.

A message fans out into parts that may be written by other workers. Each part comes back as a
`PartOutcome`; the outcomes are keyed by the message's reply subject and joined here. The join
state is only un-acked work: if it is lost in a crash the message is simply redelivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from typing_extensions import override

from schemas.carriers import Delivery, Settle, done, retry


class PartOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one of `parts` pieces of work derived from `delivery`."""

    delivery: Delivery
    parts: int
    ok: bool
    reason: str = ""
    event_ms: int = 0


class _JoinState(msgspec.Struct, kw_only=True):
    seen: int = 0
    failed: bool = False


class _JoinLogic(StatefulBatchLogic[PartOutcome, Settle, _JoinState]):
    """Ack once every part succeeded; nak as soon as one failed (the rest are then ignored)."""

    def __init__(self, state: _JoinState | None) -> None:
        self.state = state or _JoinState()

    @override
    def on_batch(self, values: list[PartOutcome]) -> tuple[Iterable[Settle], bool]:
        out: list[Settle] = []
        state = self.state
        for outcome in values:
            state.seen += 1
            if not outcome.ok and not state.failed:
                state.failed = True
                out.append(retry(outcome.delivery, outcome.reason))
            if state.seen >= outcome.parts:
                if not state.failed:
                    out.append(done(outcome.delivery, outcome.event_ms))
                return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> _JoinState:
        return msgspec.structs.replace(self.state)


@operator
def settle_parts(step_id: str, outcomes: Stream[PartOutcome]) -> Stream[Settle]:
    """One `Settle` per message, once all of its parts have reported (keyed by the ack handle)."""
    keyed = op.key_on("key_by_message", outcomes, lambda outcome: outcome.delivery.reply)
    joined = op.stateful_batch("join_parts", keyed, _JoinLogic)
    return op.key_rm("unkey", joined)


class _CollectState(msgspec.Struct, kw_only=True):
    items: list[object] = msgspec.field(default_factory=list)
    deadline: datetime | None = None


class _CollectLogic(StatefulBatchLogic[object, list[object], _CollectState]):
    """Gather a key's items until `max_size` or until `timeout` after the first one (not the last)."""

    def __init__(self, state: _CollectState | None, timeout: timedelta, max_size: int, now: Callable[[], datetime]) -> None:
        self.state = state or _CollectState()
        self.timeout = timeout
        self.max_size = max_size
        self.now = now

    @override
    def on_batch(self, values: list[object]) -> tuple[Iterable[list[object]], bool]:
        state = self.state
        if state.deadline is None:
            state.deadline = self.now() + self.timeout
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
    """Per key, a list of items flushed `timeout` after its first item or at `max_size` items."""
    return op.stateful_batch("collect", up, lambda state: _CollectLogic(state, timeout, max_size, _utc_now))
