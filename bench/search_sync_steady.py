"""search_sync under a steady load: publish -> visible latency at fixed rates, the flow (1 and 2 processes) next to the naive consumer.

Each rate runs `--seconds` seconds: 1,000 accounts, one account per event, every 5th event removes the oldest
membership whose add was seen visible (so its document exists by then). Visible = a realtime GET (mget by id) of the
spotlight document finds it (an add) or no longer finds it (a remove). Each consumer gets a fresh site and
runs the rates in order, the state growing as it would in production. CPU-seconds per 10k events: the
consumer's own processes, and Elasticsearch's (its pid from `.local/run/es.pid`; it also serves the
latency probe, the same way for every consumer). A little over 300 lines: load, probe, baseline and CLI
are one measurement.

    .venv/bin/python -m bench.search_sync_bench steady [--seconds 30] [--rates 500,1000,2000,4000] [--consumers flow1,flow2,naive]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elasticsearch import Elasticsearch

from bench import naive_search
from bench.cpu import per_10k, process_cpu_s
from dataflows.search_sync.indexes import SearchIndexes, install
from schemas import names, subjects
from testkit.clients import es_client
from testkit.search_oracle import added, removed
from testkit.search_site import SearchSite, close_site, open_site
from testkit.support import REPO, connect_site

ACCOUNTS = 1000
PROBE_MAX = 4000  # ids per probe round, oldest first: the probe must not become the load
CONSUMERS = ("flow1", "flow2", "naive")


def event(site: str, i: int, ts: int, removable: collections.deque[int]) -> tuple[str, bytes, str, bool]:
    """(subject, data, spotlight id it changes, added) of event number `i`: every 5th removes the oldest add seen visible."""
    if i % 5 == 4 and removable:
        j = removable.popleft()
        account = f"u{j % ACCOUNTS}"
        return subjects.inbox_local(site, "member_removed"), removed(f"r{j}", [account], ts), f"{account}_r{j}", False
    account = f"u{i % ACCOUNTS}"
    return subjects.inbox_local(site, "member_added"), added(f"r{i}", [account], ts, name=f"room {i}"), f"{account}_r{i}", True


@dataclass
class Row:
    consumer: str
    rate: int
    achieved: float
    events: int
    p50: float
    p95: float
    p99: float
    consumer_cpu: float  # CPU-s per 10k events
    es_cpu: float
    load: float
    unseen: int


def _pct(values: Sequence[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else float("nan")


def es_pid() -> int:
    return int((REPO / ".local" / "run" / "es.pid").read_text().split()[0])


class Probe:
    """Realtime GETs of the spotlight documents still waiting, oldest first, until each is visible."""

    def __init__(self, es: Elasticsearch, index: str, removable: collections.deque[int]) -> None:
        self.es = es
        self.index = index
        self.removable = removable  # adds seen visible, oldest first: what the next removes target
        self.sent: dict[int, tuple[str, float, bool]] = {}  # event number -> (doc id, publish time, added)
        self.seen: dict[int, float] = {}
        self.pending: dict[int, None] = {}  # sent and not seen yet, oldest first

    def add(self, i: int, doc_id: str, now: float, is_add: bool) -> None:
        self.sent[i] = (doc_id, now, is_add)
        self.pending[i] = None

    def waiting(self) -> list[int]:
        return list(itertools.islice(self.pending, PROBE_MAX))

    async def run(self, done: asyncio.Event) -> None:
        while not (done.is_set() and not self.pending):
            waiting = self.waiting()
            if waiting:
                ids = sorted({self.sent[i][0] for i in waiting})
                found = await asyncio.to_thread(self.es.mget, index=self.index, ids=ids, source=False, realtime=True)
                now = time.perf_counter()
                present = {doc["_id"] for doc in found["docs"] if doc.get("found")}
                for i in waiting:
                    doc_id, _, is_add = self.sent[i]
                    if (doc_id in present) == is_add:
                        self.seen[i] = now
                        del self.pending[i]
                        if is_add:
                            self.removable.append(i)
            await asyncio.sleep(0.02)

    def latencies(self) -> list[float]:
        return sorted(self.seen[i] - t for i, (_, t, _) in self.sent.items() if i in self.seen)


async def publish_steady(site: SearchSite, probe: Probe, rate: int, seconds: int, first: int) -> float:
    """Publish `rate` events/s for `seconds` s in 10 ms ticks; the achieved rate."""
    total = rate * seconds
    sent = 0
    t0 = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        batch = [event(site.site, first + i, int(time.time() * 1000), probe.removable) for i in range(sent, due)]
        now = time.perf_counter()
        for i, (_, _, doc_id, is_add) in enumerate(batch, start=first + sent):
            probe.add(i, doc_id, now, is_add)
        for subject, data, _, _ in batch:  # core publishes, flushed per tick: a JetStream ack per event caps the rate
            await site.nc.publish(subject, data)
        await site.nc.flush()
        sent = due
        await asyncio.sleep(max(0.0, t0 + (sent + 1) / rate - time.perf_counter(), 0.005))
    return total / (time.perf_counter() - t0)


def _naive_process(servers: Mapping[str, Any], site: str, stop: Any) -> None:
    asyncio.run(_naive_consumer(servers, site, stop))


async def _naive_consumer(servers: Mapping[str, Any], site: str, stop: Any) -> None:
    nc = await connect_site(servers, "s1")
    es = es_client(servers, request_timeout=60)
    idx = SearchIndexes(user_room=names.user_room_alias(site), spotlight=names.spotlight_alias(site), room_names=names.room_names_alias(site))
    await naive_search.consume(nc, es, site, idx, stop)
    await nc.close()


async def run_consumer(servers: Mapping[str, Any], es: Elasticsearch, consumer: str, rates: Sequence[int], seconds: int, flow_env: Mapping[str, str]) -> list[Row]:
    site = await open_site(servers, es)
    install(es, site.indexes)
    stop = multiprocessing.get_context("spawn").Event()
    naive: Any = None
    rows: list[Row] = []
    try:
        if consumer == "naive":
            naive = multiprocessing.get_context("spawn").Process(target=_naive_process, args=(dict(servers), site.site, stop))
            naive.start()
            pids = [naive.pid]
        else:
            flow = site.start_flow(processes=2 if consumer == "flow2" else 1, **flow_env)
            pids = [proc.pid for proc in flow.procs]
        print(f"[{consumer}] site {site.site}, consumer pids {pids}", flush=True)
        consumer_cpu: Callable[[], float] = lambda: sum(process_cpu_s(pid) for pid in pids)  # noqa: E731
        es_process = es_pid()
        first = 0
        # warm-up: the consumer is up and has written one document
        removable: collections.deque[int] = collections.deque()
        warm = Probe(es, site.indexes.spotlight, removable)
        await _measure(site, warm, 10, 1, first)
        first += 10
        for rate in rates:
            probe = Probe(es, site.indexes.spotlight, removable)
            cpu0, es0 = consumer_cpu(), process_cpu_s(es_process)
            achieved = await _measure(site, probe, rate, seconds, first)
            await site.drain(timeout=600)
            events = rate * seconds
            lat = probe.latencies()
            rows.append(
                Row(consumer, rate, achieved, events, _pct(lat, 0.5), _pct(lat, 0.95), _pct(lat, 0.99),
                    per_10k(consumer_cpu() - cpu0, events), per_10k(process_cpu_s(es_process) - es0, events), os.getloadavg()[0], events - len(lat))
            )  # fmt: skip
            print(_format(rows[-1], None), flush=True)
            first += events
        print(f"[{consumer}] {es_work(es, site.site)}", flush=True)
    finally:
        stop.set()
        if naive is not None:
            naive.join(10)
            if naive.is_alive():
                naive.kill()
        await close_site(site)
    return rows


def es_work(es: Elasticsearch, site: str) -> str:
    """What Elasticsearch did for this site's indexes over all rates (the probe's realtime GETs included)."""
    lines = []
    for index, stats in sorted(es.indices.stats(index=f"*-{site}*", metric="indexing,refresh,merge,get")["indices"].items()):
        total = stats["primaries"]
        parts = {
            "index": (total["indexing"]["index_total"] + total["indexing"]["delete_total"], total["indexing"]["index_time_in_millis"]),
            "refresh": (total["refresh"]["total"], total["refresh"]["total_time_in_millis"]),
            "merge": (total["merges"]["total"], total["merges"]["total_time_in_millis"]),
            "get": (total["get"]["total"], total["get"]["time_in_millis"]),
        }
        lines.append(f"  {index:<28} " + ", ".join(f"{name} {count:,} ops {ms / 1000:.1f} s" for name, (count, ms) in parts.items()))
    return "Elasticsearch work per index (ops, time):\n" + "\n".join(lines)


async def _measure(site: SearchSite, probe: Probe, rate: int, seconds: int, first: int) -> float:
    done = asyncio.Event()
    task = asyncio.create_task(probe.run(done))
    achieved = await publish_steady(site, probe, rate, seconds, first)
    done.set()
    try:
        await asyncio.wait_for(task, timeout=120)
    except TimeoutError:
        pass  # reported as unseen
    return achieved


HEADER = (
    f"{'consumer':<8} {'rate/s':>7} {'sent/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'p50 x':>6} {'p99 x':>6}"
    f" {'cons CPU-s/10k':>14} {'ES CPU-s/10k':>12} {'total x':>7} {'load':>5} {'unseen':>6}"
)


def _format(row: Row, base: Row | None) -> str:
    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:>6.2f}" if b else f"{'-':>6}"

    total = row.consumer_cpu + row.es_cpu
    return (
        f"{row.consumer:<8} {row.rate:>7} {row.achieved:>7.0f} {row.p50:>7.0f} {row.p95:>7.0f} {row.p99:>7.0f}"
        f" {ratio(row.p50, base.p50 if base else None)} {ratio(row.p99, base.p99 if base else None)}"
        f" {row.consumer_cpu:>14.2f} {row.es_cpu:>12.2f} {ratio(total, base.consumer_cpu + base.es_cpu if base else None):>7}"
        f" {row.load:>5.1f} {row.unseen:>6}"
    )


def print_table(rows: Sequence[Row], seconds: int) -> None:
    print(f"\nsteady rate, {seconds} s per rate, {ACCOUNTS:,} accounts, every 5th event a remove; visible = realtime GET of the spotlight doc")
    print("x = ratio to the naive consumer at the same rate in this run; CPU-s per 10k events (consumer processes; Elasticsearch)")
    print(HEADER)
    naive = {row.rate: row for row in rows if row.consumer == "naive"}
    for row in rows:
        print(_format(row, naive.get(row.rate)))


def _rates(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _consumers(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(CONSUMERS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(CONSUMERS)}; got {text!r}")
    return chosen


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a positive integer, not {text!r}")
    return value


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("CHATFED_"):
        raise argparse.ArgumentTypeError(f"expected CHATFED_NAME=value, got {text!r}")
    return key, value


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="search_sync_bench steady", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--seconds", type=_positive, default=30, help="seconds per rate (default 30)")
    cli.add_argument("--rates", type=_rates, default=[500, 1000, 2000, 4000], help="events/s, comma-separated (default 500,1000,2000,4000)")
    cli.add_argument("--consumers", type=_consumers, default=list(CONSUMERS), help="flow1 (one process), flow2 (two), naive; default all")
    cli.add_argument("--flow-env", type=env_pair, action="append", default=[], metavar="CHATFED_X=V", help="extra setting for the flow processes")
    return cli


async def main(args: argparse.Namespace) -> None:
    from bench.search_sync_bench import _servers

    servers = _servers()
    es = es_client(servers, request_timeout=60)
    rows: list[Row] = []
    for consumer in args.consumers:
        rows += await run_consumer(servers, es, consumer, args.rates, args.seconds, dict(args.flow_env))
    print_table(rows, args.seconds)


def cli(argv: Sequence[str] | None = None) -> None:
    asyncio.run(main(parser().parse_args(argv)))


if __name__ == "__main__":
    cli()
