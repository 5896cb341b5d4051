"""Command -> result latency of a running room_worker at a paced command rate (issue 12, item 5)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.cpu import per_10k, process_cpu_s
from bench.stores import Store, cpu_delta
from schemas import subjects
from testkit.room_harness import RoomHarness


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


@dataclass(frozen=True)
class Paced:
    n: int
    rate: float
    achieved: float  # commands/s
    ms: list[float]  # publish -> result, per command
    flow_cpu: float
    store_cpu: dict[str, float]  # ferretdb, postgres
    load: float

    def pct(self, p: float) -> float:
        return _pct(self.ms, p)

    def table(self) -> str:
        stores = " | ".join(f"{k} CPU-s per 10k" for k in self.store_cpu)
        cells = " | ".join(f"{per_10k(v, self.n):.1f}" for v in self.store_cpu.values())
        return "\n".join(
            [
                f"paced: {self.n} creates at {self.rate:.0f}/s, load average {self.load:.2f}",
                "",
                f"| commands | achieved commands/s | p50 ms | p95 ms | p99 ms | max ms | flow CPU-s per 10k | {stores} |",
                "|---|---|---|---|---|---|---|" + "---|" * len(self.store_cpu),
                f"| {self.n} | {self.achieved:,.1f} | {self.pct(0.5):,.0f} | {self.pct(0.95):,.0f} | {self.pct(0.99):,.0f} | {max(self.ms):,.0f} "
                f"| {per_10k(self.flow_cpu, self.n):.1f} | {cells} |",
            ]
        )


async def paced_latency(h: RoomHarness, store: Store, bodies: list[dict[str, Any]], *, rate: float, timeout: float = 600) -> Paced:
    """Send `bodies` as creates at `rate`/s to `h`'s running flow; publish -> result latency and CPU."""
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
    flow_pid = h.flow.procs[0].pid
    flow_cpu, store_cpu = process_cpu_s(flow_pid), store.cpu()
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
    return Paced(
        n=len(bodies), rate=rate, achieved=len(bodies) / wall, ms=[v * 1000 for v in took.values()],
        flow_cpu=process_cpu_s(flow_pid) - flow_cpu, store_cpu=cpu_delta(store_cpu, store.cpu()), load=os.getloadavg()[0],
    )
