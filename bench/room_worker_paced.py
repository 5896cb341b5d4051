"""Command -> result latency of a running room_worker at a paced command rate (issue 12, item 5)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

from bench.cpu import per_10k, process_cpu_s
from schemas import subjects
from testkit.room_harness import RoomHarness
from testkit.support import REPO


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def paced_latency(h: RoomHarness, bodies: list[dict[str, Any]], *, rate: float, timeout: float = 600) -> str:
    """Send `bodies` as creates at `rate`/s to `h`'s running flow; a table of publish -> result latency (ms)."""
    assert h.flow is not None
    nc, js = h.client, h.client.jetstream()
    sent: dict[str, float] = {}
    took: dict[str, float] = {}
    done = asyncio.Event()

    async def on_result(msg: Any) -> None:
        rid = msg.subject.rsplit(".", 1)[1]
        if rid in sent and rid not in took:
            took[rid] = time.perf_counter() - sent[rid]
            if len(took) == len(bodies):
                done.set()

    sub = await nc.subscribe(subjects.command_result_filter(), cb=on_result)
    fdb_pid = int((REPO / ".local" / "run" / "ferretdb.pid").read_text())
    flow_pid = h.flow.procs[0].pid
    flow_cpu, fdb_cpu = process_cpu_s(flow_pid), process_cpu_s(fdb_pid)
    started = time.perf_counter()
    try:
        for i, body in enumerate(bodies):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            rid = str(uuid.uuid4())
            sent[rid] = time.perf_counter()
            await js.publish(subjects.rooms_command(h.site, "create"), json.dumps(body).encode(), headers={"X-Request-ID": rid})
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    wall = time.perf_counter() - started
    flow_cpu, fdb_cpu = process_cpu_s(flow_pid) - flow_cpu, process_cpu_s(fdb_pid) - fdb_cpu
    ms = [v * 1000 for v in took.values()]
    n = len(bodies)
    return "\n".join(
        [
            f"paced: {n} creates at {rate:.0f}/s, load average {os.getloadavg()[0]:.2f}",
            "",
            "| commands | achieved commands/s | p50 ms | p95 ms | p99 ms | max ms | flow CPU-s per 10k | FerretDB CPU-s per 10k |",
            "|---|---|---|---|---|---|---|---|",
            f"| {n} | {n / wall:,.1f} | {_pct(ms, 0.5):,.0f} | {_pct(ms, 0.95):,.0f} | {_pct(ms, 0.99):,.0f} | {max(ms):,.0f} "
            f"| {per_10k(flow_cpu, n):.1f} | {per_10k(fdb_cpu, n):.1f} |",
        ]
    )
