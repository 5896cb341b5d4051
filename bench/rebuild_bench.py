"""Rebuild rate: the old replay path against the bulk path, on one site whose INBOX holds N member events.

    .venv/bin/python -m bench.rebuild_bench [--events 100000] [--methods replay,bulk,bulk:0] [--dev] [--live] [--no-warmup]

Every method rebuilds the same stream, one after the other, in this run (so the ratios compare like with like on a
shared machine). `bulk:K` is the bulk path with K decoding worker processes (`bulk`: the default, one per core but
one). By default the servers are a private set (testkit/private_servers.py: own NATS and Elasticsearch; the dev
servers are untouched), so Elasticsearch's and NATS's CPU are this bench's alone; `--dev` uses the dev servers (a
test site of its own; their CPU then includes other clients). `--live` also runs the live flow over the stream
first, as a site in service would have (slow: the live flow's rate); without it the live indexes start empty. An
unreported bulk rebuild runs first (`--no-warmup`: not): a fresh Elasticsearch JVM compiles its bulk path meanwhile.

Columns: documents in the swapped-in user-room and spotlight indexes; fill s (stream to filled indexes, as
`RebuildReport`: before the swap); docs/s = documents / fill s; × replay against the replay row; whole s (the call,
setup and swap included); CPU-seconds per 10k documents of the rebuild (its process and its children: the replay
flow, the decoding workers), of Elasticsearch and of NATS; the 1-minute load average before and after. Also the RSS
the in-memory fold holds per 100k documents.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.cpu import process_cpu_s
from chatfed_cli.rebuild import RebuildReport, rebuild_site
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.fold import ViewsFold
from testkit.clients import es_client, es_settings, nats_settings
from testkit.private_servers import PrivateServers
from testkit.search_oracle import delivery
from testkit.search_site import close_site, open_site, publishable, random_history
from testkit.support import REPO, connect_site, flow_env


def _own_cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fold_memory(items: list[tuple[str, bytes]]) -> tuple[int, float]:
    """(documents, MB of RSS) a fold of `items` holds once every chunk is applied."""
    gc.collect()
    before = _rss_mb()
    fold = ViewsFold()
    for start in range(0, len(items), 50_000):
        chunk = []
        for subject, data in items[start : start + 50_000]:
            parsed = search_parts.parse(delivery(data, subject=subject))
            if search_parts.is_parts(parsed):
                chunk.extend(parsed)
        fold.apply(chunk)
    gc.collect()
    documents = len(fold.user_rooms) + len(fold.spotlight) + len(fold.names)
    return documents, _rss_mb() - before


@dataclass(frozen=True)
class Row:
    method: str
    report: RebuildReport
    whole_s: float
    cpu_s: float
    es_cpu_s: float
    nats_cpu_s: float
    load: tuple[float, float]


@contextmanager
def _servers(dev: bool) -> Iterator[tuple[dict[str, Any], Callable[[], float], Callable[[], float]]]:
    """(servers info, ES CPU-seconds so far, NATS s1 CPU-seconds so far)."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "services.py"), "info"], capture_output=True, text=True, check=True)
    dev_info = json.loads(out.stdout)
    if dev:
        es = es_client(dev_info)

        def es_cpu() -> float:  # every node's process CPU: includes the other clients of the dev servers
            nodes = es.nodes.stats(metric="process")["nodes"]
            return sum(node["process"]["cpu"]["total_in_millis"] for node in nodes.values()) / 1000

        nats_pid = _pid(REPO / ".local" / "run", "nats-s1")
        yield dev_info, es_cpu, (lambda: process_cpu_s(nats_pid)) if nats_pid else (lambda: 0.0)
        return
    servers = PrivateServers("rebuild-bench", own=("nats", "es"), shared=dev_info)
    try:
        print(f"starting private servers (NATS, Elasticsearch) in {servers.state} ...", flush=True)
        servers.up()
        run = servers.state / "run"
        es_pid, nats_pid = _pid(run, "es"), _pid(run, "nats-s1")
        assert es_pid and nats_pid, f"no pid files in {run}"
        yield servers.info, lambda: process_cpu_s(es_pid), lambda: process_cpu_s(nats_pid)
    finally:
        servers.close()


def _pid(run_dir: Any, server: str) -> int:
    path = run_dir / f"{server}.pid"
    return int(path.read_text().split()[0]) if path.exists() else 0


def _method(spec: str) -> tuple[str, int | None]:
    method, _, workers = spec.partition(":")
    return method, int(workers) if workers else None


def main(events: int, methods: list[str], *, dev: bool, live: bool, warmup: bool) -> None:
    _, order = random_history(events, accounts=max(events // 20, 10), rooms=max(events // 50, 10), seed=5)
    rows: list[Row] = []
    with _servers(dev) as (servers, es_cpu, nats_cpu):
        es = es_client(servers)

        async def prepare():  # type: ignore[no-untyped-def]
            site = await open_site(servers, es)
            if live:
                site.start_flow()
            await site.publish(publishable(site.site, order))
            if live:
                await site.drain(timeout=1800)
                for flow in site.flows:
                    flow.stop()
                site.flows.clear()
            await site.nc.close()
            return site

        print(f"publishing {len(order):,} events{' and draining them through the live flow' if live else ''} ...", flush=True)
        site = asyncio.run(prepare())
        try:

            def rebuild(method: str, workers: int | None) -> RebuildReport:
                return rebuild_site(
                    site=site.site,
                    nats_settings=nats_settings(servers, "s1"),
                    elastic_settings=es_settings(servers),
                    flow_env=flow_env(servers, site.site),
                    method=method,
                    parse_workers=workers,
                )

            if warmup:  # a fresh JVM compiles its bulk path on the first big bulks: not what we measure
                print("warm-up: one bulk rebuild, not reported ...", flush=True)
                rebuild("bulk", 0)
            for spec in methods:
                method, workers = _method(spec)
                gc.collect()
                cpu0, es0, nats0, load0, started = _own_cpu_s(), es_cpu(), nats_cpu(), os.getloadavg()[0], time.monotonic()
                report = rebuild(method, workers)
                whole = time.monotonic() - started
                rows.append(Row(spec, report, whole, _own_cpu_s() - cpu0, es_cpu() - es0, nats_cpu() - nats0, (load0, os.getloadavg()[0])))
                print(f"  {spec}: {report.documents:,} documents in {report.fill_seconds:.1f}s", flush=True)
        finally:

            async def close() -> None:
                site.nc = await connect_site(servers, "s1")
                await close_site(site)

            asyncio.run(close())
    _table(rows, len(order), events, dev)
    documents, mb = fold_memory(publishable("s1", order))
    print(f"\nfold memory: {documents:,} documents held in {mb:.1f} MB RSS -> {mb * 100_000 / max(documents, 1):.1f} MB per 100k documents")


def _table(rows: list[Row], published: int, events: int, dev: bool) -> None:
    base = next((r.report.docs_per_second for r in rows if r.method == "replay"), 0.0)
    where = "dev servers (ES and NATS CPU include other clients)" if dev else "private NATS and Elasticsearch"
    print(f"\n{published:,} events in INBOX ({events:,} distinct), {os.cpu_count()} cores, {where}; CPU-s per 10k documents")
    print(
        "| method | events read | documents | fill s | docs/s | × replay | whole s "
        "| rebuild CPU s/10k | ES CPU s/10k | NATS CPU s/10k | load avg before → after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        report = row.report
        per = 10_000 / max(report.documents, 1)
        ratio = f"{report.docs_per_second / base:.2f}" if base else "-"
        print(
            f"| {row.method} | {report.events:,} | {report.documents:,} | {report.fill_seconds:.1f} | {report.docs_per_second:,.0f} | {ratio} | "
            f"{row.whole_s:.1f} | {row.cpu_s * per:.2f} | {row.es_cpu_s * per:.2f} | {row.nats_cpu_s * per:.2f} | {row.load[0]:.1f} → {row.load[1]:.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--methods", default="replay,bulk,bulk:0", help="comma-separated: replay, bulk, bulk:K (K decoding workers)")
    parser.add_argument("--dev", action="store_true", help="use the dev servers (a test site of its own) instead of private ones")
    parser.add_argument("--live", action="store_true", help="run the live flow over the stream first")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unreported bulk rebuild that warms Elasticsearch up")
    args = parser.parse_args()
    main(args.events, args.methods.split(","), dev=args.dev, live=args.live, warmup=not args.no_warmup)
