"""One verdict per message once all its parts reported; coalescing flushes on size or on EOF."""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.jetstream import backoff_ms, parse_ack_reply
from connectors.operators import PartOutcome, collect_for, settle_parts
from connectors.settings import Tuning
from schemas.carriers import Delivery, Settle, Verdict


def _delivery(seq: int) -> Delivery:
    return Delivery(subject="s", data=b"", reply=f"$JS.ACK.S.c.1.{seq}.{seq}.0.0", stream="S", stream_seq=seq, num_delivered=1)


def _settle(outcomes: list[PartOutcome]) -> list[Settle]:
    flow = Dataflow("settle_test")
    out: list[Settle] = []
    op.output("out", settle_parts("settle", op.input("in", flow, TestingSource(outcomes))), TestingSink(out))
    run_main(flow)
    return out


def test_message_is_acked_only_after_every_part() -> None:
    a, b = _delivery(1), _delivery(2)
    out = _settle(
        [
            PartOutcome(delivery=a, parts=3, ok=True),
            PartOutcome(delivery=b, parts=2, ok=True),
            PartOutcome(delivery=a, parts=3, ok=True),
            PartOutcome(delivery=a, parts=3, ok=True, event_ms=7),
        ]
    )
    assert [(s.delivery.stream_seq, s.verdict) for s in out] == [(1, Verdict.ACK)]
    assert out[0].event_ms == 7


def test_one_failed_part_retries_the_message_once() -> None:
    a = _delivery(1)
    out = _settle(
        [
            PartOutcome(delivery=a, parts=3, ok=False, reason="es down"),
            PartOutcome(delivery=a, parts=3, ok=True),
            PartOutcome(delivery=a, parts=3, ok=False, reason="es down"),
        ]
    )
    assert [(s.verdict, s.reason) for s in out] == [(Verdict.RETRY, "es down")]


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
