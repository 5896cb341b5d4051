"""Benchmark search_sync against a naive consumer (nats-py fetch + one bulk per fetch + ack): backlog rate and publish-to-searchable latency.

Run with the servers up: `.venv/bin/python -m bench.search_sync_bench [--backlog 100000] [--rate 200] [--seconds 20]`.
Steady rates (500-4,000 events/s, 1 and 2 flow processes vs the naive consumer): `... search_sync_bench steady --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import naive_search
from bench.cpu import per_10k, process_cpu_s
from bench.search_sync_steady import env_pair, es_pid
from dataflows.search_sync.indexes import SearchIndexes, install
from schemas import subjects
from testkit.clients import es_client
from testkit.search_oracle import added
from testkit.search_site import SearchSite, close_site, open_site
from testkit.support import REPO


def _servers() -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "services.py"), "info"], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def _event(site: str, index: int, ts: int) -> tuple[str, bytes]:
    # 1,000 accounts x many rooms: realistic fan-in per account, one account per event
    return subjects.inbox_local(site, "member_added"), added(f"r{index}", [f"u{index % 1000}"], ts, name=f"room {index}")


async def _drain_time(site: SearchSite, count: int) -> float:
    started = time.perf_counter()
    await site.drain(timeout=1800)
    return count / (time.perf_counter() - started)


async def _latencies(site: SearchSite, rate: int, seconds: int) -> list[float]:
    """Publish at `rate`/s; poll search until each event's spotlight doc is searchable."""
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    base = 10_000_000

    async def poll() -> None:
        while len(seen) < rate * seconds:
            waiting = [doc_id for doc_id in sent if doc_id not in seen]
            if waiting:
                hits = (await asyncio.to_thread(site.es.search, index=site.indexes.spotlight, size=len(waiting), query={"ids": {"values": waiting}}, source=False))["hits"]["hits"]
                now = time.perf_counter()
                for hit in hits:
                    seen.setdefault(hit["_id"], now)
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    js = site.nc.jetstream()
    t0 = time.perf_counter()
    for i in range(rate * seconds):
        index = base + i
        subject, data = _event(site.site, index, int(time.time() * 1000))
        await js.publish(subject, data)
        sent[f"u{index % 1000}_r{index}"] = time.perf_counter()
        await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
    await asyncio.wait_for(poller, timeout=120)
    return sorted(seen[k] - sent[k] for k in sent)


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


async def main(backlog: int, rate: int, seconds: int, flow_env: dict[str, str] | None = None) -> None:
    servers = _servers()
    es = es_client(servers, request_timeout=60)
    rows: list[tuple[str, float, float, float, float, float]] = []
    es_process = es_pid()
    interval = "?"
    for name in ("search_sync flow", "baseline fetch+bulk+ack"):
        site = await open_site(servers, es)
        install(es, SearchIndexes(user_room=site.indexes.user_room, spotlight=site.indexes.spotlight, room_names=site.indexes.room_names))
        try:
            await site.publish([_event(site.site, i, 1_000 + i) for i in range(backlog)], chunk=1000)
            stop = asyncio.Event()
            naive = None
            if name.startswith("search_sync"):
                site.start_flow(**(flow_env or {}))
            else:
                naive = asyncio.create_task(naive_search.consume(site.nc, site.es, site.site, site.indexes, stop))
            refresh = es.indices.get_settings(index=site.indexes.spotlight, name="index.refresh_interval", include_defaults=True)
            interval = next(iter(refresh.values()))
            interval = interval.get("settings", {}).get("index", {}).get("refresh_interval") or interval["defaults"]["index"]["refresh_interval"]
            cpu_of = (lambda: process_cpu_s(site.flows[-1].procs[0].pid)) if naive is None else time.process_time
            cpu_before, es_before = cpu_of(), process_cpu_s(es_process)
            throughput = await _drain_time(site, backlog)
            cpu, es_cpu = cpu_of() - cpu_before, process_cpu_s(es_process) - es_before
            lat = await _latencies(site, rate, seconds)
            stop.set()
            if naive:
                await naive
            rows.append((name, throughput, _pct(lat, 0.5), _pct(lat, 0.99), per_10k(cpu, backlog), per_10k(es_cpu, backlog)))
        finally:
            await close_site(site)
    print(f"\nbacklog {backlog:,} events; steady {rate}/s for {seconds}s (spotlight refresh_interval {interval}); load average {os.getloadavg()[0]:.2f}")
    print("CPU-s/10k while the backlog drains: the consumer's own process, Elasticsearch's, and both (x: against the baseline)")
    baseline = rows[-1]  # measured in the same run, after the flow
    print(f"{'consumer':<26} {'backlog ev/s':>12} {'x baseline':>10} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>6} {'CPU-s/10k':>10} {'ES':>6} {'both':>6} {'both x':>6}")
    for name, throughput, p50, p99, cpu, es_cpu in rows:
        print(
            f"{name:<26} {throughput:>12,.0f} {throughput / baseline[1]:>10.2f} {p50:>8.0f} {p99:>8.0f} {p50 / baseline[2]:>6.2f}"
            f" {cpu:>10.2f} {es_cpu:>6.2f} {cpu + es_cpu:>6.2f} {(cpu + es_cpu) / (baseline[4] + baseline[5]):>6.2f}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["steady"]:  # the steady-rate mode lives in its own module (bench/search_sync_steady.py)
        from bench.search_sync_steady import cli

        cli(sys.argv[2:])
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--flow-env", type=env_pair, action="append", default=[], metavar="CHATFED_X=V", help="extra setting for the flow process")
    args = parser.parse_args()
    asyncio.run(main(args.backlog, args.rate, args.seconds, dict(args.flow_env)))
