"""search_sync's graph under bytewax.testing: poison to the dead-letter verdict, one verdict per message, coalescing."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.search_sync import build_flow
from dataflows.search_sync.parts import parse
from schemas.carriers import Delivery, Settle, Verdict
from testkit.search_oracle import MemoryViews, added, delivery, removed, renamed
from tests.unit.test_search_views import SEARCH_VECTORS, check_vector_expectations


def _run_main(flow: Dataflow) -> None:
    run_main(flow)


def _cluster_main(flow: Dataflow) -> None:
    cluster_main(flow, [], 0, worker_count_per_proc=2)


@pytest.fixture(params=[_run_main, _cluster_main], ids=["run_main", "cluster_2_workers"])
def runner(request: pytest.FixtureRequest) -> Callable[[Dataflow], None]:
    run: Callable[[Dataflow], None] = request.param
    return run


def _run(runner: Callable[[Dataflow], None], deliveries: list[Delivery], memory: MemoryViews, flush_max: int = 1000) -> dict[int, Settle]:
    out: list[Settle] = []
    runner(build_flow(TestingSource(deliveries), memory.write, TestingSink(out), flush=timedelta(seconds=5), flush_max=flush_max))
    by_seq = {settle.delivery.stream_seq: settle for settle in out}
    assert len(by_seq) == len(out), "one verdict per message"
    return by_seq


def test_poison_is_dead_lettered_and_the_rest_is_acked(runner: Callable[[Dataflow], None]) -> None:
    memory = MemoryViews()
    settled = _run(runner, [delivery(b"garbage", 1), delivery(added("r1", ["alice", "bob"], 10), 2), delivery(added("r1", [""], 11), 3)], memory)
    assert {seq: s.verdict for seq, s in settled.items()} == {1: Verdict.DEAD, 2: Verdict.ACK, 3: Verdict.DEAD}
    assert "envelope" in settled[1].reason
    assert sorted(memory.spotlight) == ["alice_r1", "bob_r1"]


def test_a_message_is_acked_once_all_its_accounts_are_written(runner: Callable[[Dataflow], None]) -> None:
    memory = MemoryViews()
    accounts = [f"u{i}" for i in range(20)]
    settled = _run(runner, [delivery(added("r1", accounts, 10), 1)], memory)
    assert settled[1].verdict is Verdict.ACK and settled[1].event_ms == 10
    assert sorted(memory.user_rooms) == sorted(accounts)


def test_one_failed_account_retries_the_whole_message(runner: Callable[[Dataflow], None]) -> None:
    memory = MemoryViews()
    memory.fail_accounts = {"bob"}
    settled = _run(runner, [delivery(added("r1", ["alice", "bob", "carol"], 10), 1), delivery(added("r2", ["carol"], 11), 2)], memory)
    assert {seq: s.verdict for seq, s in settled.items()} == {1: Verdict.RETRY, 2: Verdict.ACK}


def test_events_for_one_account_in_one_flush_make_one_user_room_write(runner: Callable[[Dataflow], None]) -> None:
    memory = MemoryViews()
    events = [delivery(added(f"r{i}", ["alice"], 100 + i), i) for i in range(1, 41)] + [delivery(removed("r3", ["alice"], 500), 41)]
    settled = _run(runner, events, memory)
    assert all(s.verdict is Verdict.ACK for s in settled.values()) and len(settled) == 41
    assert memory.user_room_writes == 1
    assert len(memory.user_rooms["alice"].rooms) == 39


def test_rename_flows_through_its_own_key(runner: Callable[[Dataflow], None]) -> None:
    memory = MemoryViews()
    settled = _run(runner, [delivery(added("r1", ["alice"], 10), 1), delivery(renamed("r1", "shiny", 20), 2)], memory, flush_max=1)
    assert {s.verdict for s in settled.values()} == {Verdict.ACK}
    assert memory.spotlight["alice_r1"].room_name == "shiny"


@pytest.mark.parametrize("path", SEARCH_VECTORS, ids=[p.stem for p in SEARCH_VECTORS])
def test_vector_through_the_flow(path: Path, runner: Callable[[Dataflow], None]) -> None:
    vector = json.loads(path.read_text())
    memory = MemoryViews()
    settled = _run(runner, [delivery(vector["data"].encode(), 1, subject=vector["subject"])], memory)
    assert settled[1].verdict is Verdict.ACK
    check_vector_expectations(
        vector["expect"],
        {a: msgspec.to_builtins(d) for a, d in memory.user_rooms.items()},
        {i: msgspec.to_builtins(d) for i, d in memory.spotlight.items()},
    )


def test_a_part_carries_the_ack_handle_not_the_message() -> None:
    """A member_added for N accounts must not move N copies of the message between workers (issue 12)."""

    def largest_part(accounts: int) -> int:
        parsed = parse(delivery(added("r1", [f"u{i}" for i in range(accounts)], 10), 1))
        assert isinstance(parsed, list) and len(parsed) == accounts
        return max(len(pickle.dumps(part)) for part in parsed)

    assert largest_part(2_000) <= largest_part(2) + 8  # only the account grows: "u1999" against "u1"
