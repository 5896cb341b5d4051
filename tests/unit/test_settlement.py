"""One verdict per message once the message and all its parts' outcomes met, in any order; coalescing; the operators' examples."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors import operators
from connectors.jetstream import backoff_ms, parse_ack_reply
from connectors.operators import Awaiting, PartOutcome, _JoinLogic, collect_for, decode_or_dead_letter, settle_parts
from connectors.settings import Tuning
from schemas.carriers import AckHandle, Delivery, Settle, Verdict


def _delivery(seq: int) -> Delivery:
    return Delivery(subject="s", data=b"raw", reply=f"$JS.ACK.S.c.1.{seq}.{seq}.0.0", stream="S", stream_seq=seq, num_delivered=1)


def _ack(seq: int, event_ms: int = 0) -> AckHandle:
    return AckHandle(reply=_delivery(seq).reply, event_ms=event_ms)


def _settle(awaiting: list[Awaiting], outcomes: list[PartOutcome]) -> list[Settle]:
    flow = Dataflow("settle_test")
    out: list[Settle] = []
    settled = settle_parts("settle", op.input("messages", flow, TestingSource(awaiting)), op.input("outcomes", flow, TestingSource(outcomes)))
    op.output("out", settled, TestingSink(out))
    run_main(flow)
    return out


def test_message_is_acked_only_after_every_part() -> None:
    out = _settle(
        [Awaiting(delivery=_delivery(1), parts=3), Awaiting(delivery=_delivery(2), parts=2)],
        [
            PartOutcome(ack=_ack(1), ok=True),
            PartOutcome(ack=_ack(2), ok=True),
            PartOutcome(ack=_ack(1), ok=True),
            PartOutcome(ack=_ack(1, event_ms=7), ok=True),
        ],
    )
    assert [(s.delivery.stream_seq, s.verdict) for s in out] == [(1, Verdict.ACK)]
    assert out[0].event_ms == 7
    assert out[0].delivery == _delivery(1)  # the whole message, as the settle sink needs it (dead letters carry its bytes)


def test_one_failed_part_retries_the_message_once() -> None:
    out = _settle(
        [Awaiting(delivery=_delivery(1), parts=3)],
        [
            PartOutcome(ack=_ack(1), ok=False, reason="es down"),
            PartOutcome(ack=_ack(1), ok=True),
            PartOutcome(ack=_ack(1), ok=False, reason="es down"),
        ],
    )
    assert [(s.verdict, s.reason) for s in out] == [(Verdict.RETRY, "es down")]


def test_a_message_without_parts_is_acked_at_once() -> None:
    out = _settle([Awaiting(delivery=_delivery(1), parts=0)], [])
    assert [(s.delivery.stream_seq, s.verdict) for s in out] == [(1, Verdict.ACK)]


def test_a_message_decoded_to_no_parts_is_acked_without_a_write() -> None:
    flow = Dataflow("no_parts_test")
    decoded = decode_or_dead_letter("decode", op.input("pull", flow, TestingSource([_delivery(1)])), lambda delivery: [])
    written: list[object] = []
    op.output("parts", decoded.parts, TestingSink(written))
    out: list[Settle] = []
    op.output("out", settle_parts("join", decoded.awaiting, op.input("outcomes", flow, TestingSource([]))), TestingSink(out))
    run_main(flow)
    assert written == [] and [(s.delivery.stream_seq, s.verdict) for s in out] == [(1, Verdict.ACK)]


def _join(*batches: list[Awaiting | PartOutcome]) -> list[tuple[list[Settle], bool]]:
    """Drive one key's join batch by batch, as Bytewax would, in the given arrival order."""
    logic = _JoinLogic(None)
    results = []
    for batch in batches:
        out, discard = logic.on_batch(batch)
        results.append((list(out), discard))
        logic = _JoinLogic(logic.snapshot())  # as after a snapshot and resume: nothing lives outside the state
    return results


@pytest.mark.parametrize("message_at", [0, 1, 2], ids=["message-first", "message-between", "message-last"])
def test_outcomes_and_their_message_meet_in_any_order(message_at: int) -> None:
    arrivals: list[list[Awaiting | PartOutcome]] = [[PartOutcome(ack=_ack(1, 5), ok=True)], [PartOutcome(ack=_ack(1, 5), ok=True)]]
    arrivals.insert(message_at, [Awaiting(delivery=_delivery(1), parts=2)])
    results = _join(*arrivals)
    assert [discard for _, discard in results] == [StatefulBatchLogic.RETAIN, StatefulBatchLogic.RETAIN, StatefulBatchLogic.DISCARD]
    assert [[(s.verdict, s.event_ms) for s in out] for out, _ in results] == [[], [], [(Verdict.ACK, 5)]]


def test_a_failure_before_its_message_retries_on_arrival_and_then_only_counts() -> None:
    logic = _JoinLogic(None)
    out, discard = logic.on_batch([PartOutcome(ack=_ack(1), ok=False, reason="down")])
    assert (list(out), discard) == ([], StatefulBatchLogic.RETAIN)
    out, discard = logic.on_batch([Awaiting(delivery=_delivery(1), parts=3)])
    assert [(s.verdict, s.reason) for s in out] == [(Verdict.RETRY, "down")] and discard is StatefulBatchLogic.RETAIN
    assert logic.snapshot().delivery is None  # settled: the raw message is not held while the other parts report
    out, discard = logic.on_batch([PartOutcome(ack=_ack(1), ok=True), PartOutcome(ack=_ack(1), ok=True)])
    assert (list(out), discard) == ([], StatefulBatchLogic.DISCARD)


_EXAMPLES = [test for test in doctest.DocTestFinder().find(operators) if test.examples]


@pytest.mark.parametrize("example", _EXAMPLES, ids=[test.name.rsplit(".", 1)[-1] for test in _EXAMPLES])
def test_operator_docstring_examples_run(example: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(example)
    assert runner.summarize(verbose=False).failed == 0


def test_every_public_operator_has_an_example() -> None:
    assert sorted(test.name.rsplit(".", 1)[-1] for test in _EXAMPLES) == ["collect_for", "decode_or_dead_letter", "settle_parts"]


def test_collect_flushes_at_max_size_and_at_eof() -> None:
    flow = Dataflow("collect_test")
    items = [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 5)]
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda item: item[0])
    out: list[tuple[str, list[object]]] = []
    op.output("out", collect_for("collect", keyed, timedelta(seconds=30), 2), TestingSink(out))
    run_main(flow)
    batches = sorted((key, [value[1] for value in values]) for key, values in out)  # type: ignore[index]
    assert batches == [("a", [1, 2]), ("a", [3, 5]), ("b", [4])]


def test_ack_reply_parsing_handles_both_forms() -> None:
    assert parse_ack_reply("$JS.ACK.INBOX_s1.search-sync.3.42.40.1700000000000000000.5") == ("INBOX_s1", 42, 3)
    assert parse_ack_reply("$JS.ACK.s1.ABCHASH.INBOX_s1.search-sync.2.43.41.1700000000000000000.5.xyz") == ("INBOX_s1", 43, 2)


def test_backoff_grows_and_is_capped() -> None:
    tuning = Tuning(backoff_base_ms=500, backoff_max_ms=4000)
    assert [backoff_ms(n, tuning) for n in (1, 2, 3, 4, 5, 9)] == [500, 1000, 2000, 4000, 4000, 4000]


def test_collect_deadlines_fall_on_one_grid_within_the_timeout() -> None:
    # keys that start waiting at different moments of one tick flush together, none later than `timeout`
    every = timedelta(milliseconds=100)
    start = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    firsts = [start + timedelta(milliseconds=ms) for ms in (0, 1, 37, 99.9)]
    ticks = {operators.next_tick(first, every) for first in firsts}
    assert ticks == {start + every}
    assert all(timedelta(0) < operators.next_tick(first, every) - first <= every for first in firsts)
    logic = operators._CollectLogic(None, every, 10, lambda: start + timedelta(milliseconds=42))
    logic.on_batch(["x"])
    assert logic.notify_at() == start + every
