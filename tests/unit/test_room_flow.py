"""room_worker's graph with bytewax.testing: rejects are settled apart, a room's commands reach the runner in stream order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.room_worker import build_flow
from dataflows.room_worker.commands import Command, Parsed, Rejected
from schemas.carriers import Delivery, Settle, Verdict, done, ignored, poison


class RecordingRunner:
    """Stands in for the I/O side: settles everything and remembers the order it saw per room."""

    def __init__(self) -> None:
        self.order: dict[str, list[int]] = {}

    def reject(self, item: Parsed) -> Settle:
        assert isinstance(item, Rejected)
        return ignored(item.delivery, item.reason) if item.ignored else poison(item.delivery, item.reason)

    def apply(self, batches: Sequence[Sequence[object]]) -> list[Settle]:
        out = []
        for batch in batches:
            for command in sorted(batch, key=lambda c: c.delivery.stream_seq):  # type: ignore[attr-defined]
                assert isinstance(command, Command)
                self.order.setdefault(command.room_id, []).append(command.delivery.stream_seq)
                out.append(done(command.delivery))
        return out


def _delivery(seq: int, room: str, suffix: str = "member.add", data: bytes | None = None) -> Delivery:
    body = {"roomId": room, "users": ["bob"], "requesterAccount": "alice", "timestamp": seq}
    return Delivery(
        subject=f"chat.room.canonical.s1.{suffix}", data=data if data is not None else json.dumps(body).encode(),
        reply=f"reply-{seq}", stream="ROOMS_s1", stream_seq=seq, num_delivered=1,
    )


@pytest.mark.parametrize("cluster", [False, True], ids=["run_main", "cluster_2_workers"])
def test_commands_are_settled_and_ordered_per_room(cluster: bool) -> None:
    items = [_delivery(2, "ra"), _delivery(1, "ra"), _delivery(3, "rb"), _delivery(4, "ra"),
             _delivery(5, "rb", data=b"{oops"), _delivery(6, "rc", suffix="event.member.muted")]
    runner = RecordingRunner()
    out: list[Settle] = []
    flow = build_flow(TestingSource(items), runner, TestingSink(out), site="s1", order_window=timedelta(seconds=5), order_max=1000)
    if cluster:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    else:
        run_main(flow)
    verdicts = {s.delivery.stream_seq: s.verdict for s in out}
    assert verdicts == {1: Verdict.ACK, 2: Verdict.ACK, 3: Verdict.ACK, 4: Verdict.ACK, 5: Verdict.DEAD, 6: Verdict.ACK}
    assert runner.order == {"ra": [1, 2, 4], "rb": [3]}
