"""RSS of one flow process over a long run (issue 12: "< 150 MB and flat over 1M events"), on private servers.

    .venv/bin/python -m bench.flow_memory [--events 1000000] [--chunk 100000] [--accounts 20000] [--rooms 5000]
                                          [--flows search_sync,inbox_mirror] [--mirror-events N] [--flow-env NAME=VALUE ...]
                                          [--private]

The running dev servers (`./run.sh services up`, with the same CHATFED_* environment; a fresh test site of its
own, deleted at the end), or with `--private` a private set (testkit/private_servers.py: own NATS, Elasticsearch,
FerretDB), and one flow process. Member events, one account each, over `--accounts` accounts and `--rooms` rooms
(every 10th room restricted): adds, and every 5th event removes the oldest membership added so far. They go in as
a backlog of `--chunk` events at a time (published while the flow runs), and the stream is purged once the flow has
drained a chunk, so JetStream holds one chunk at most. The flow's RSS (/proc VmRSS) is read at start (idle, after a
10-event warm-up), sampled every 0.5 s, and read after each chunk. Per chunk: RSS, the peak during the chunk,
events/s (publish start to drained, so it includes the publish), CPU-seconds per 10k events of the flow process and
of the store (Elasticsearch for search_sync, FerretDB for inbox_mirror), the 1-minute load average. The slope is a
least-squares fit of RSS over the checkpoints after the first chunk (the first one fills the caches).

search_sync reads the local lane; inbox_mirror reads only the aggregate lane, so its events go through a peer's
OUTBOX as in production (its users exist first). inbox_mirror on FerretDB/SQLite slows as subscriptions grow (a
collection scan per filtered query, README "Scaling"): `--mirror-events` gives it its own, smaller count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import per_10k, process_cpu_s
from dataflows.search_sync.indexes import install
from schemas import names, subjects
from testkit.clients import es_client
from testkit.mirror_site import add as mirror_add
from testkit.mirror_site import mirror_site
from testkit.mirror_site import remove as mirror_remove
from testkit.private_servers import PrivateServers
from testkit.search_oracle import added, removed
from testkit.search_site import close_site, open_site
from testkit.support import REPO, FlowProcess

SAMPLE_S = 0.5
STARTED: list[FlowProcess] = []  # every flow process started, stopped again at exit whatever happens


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """`VmRSS` (or `VmHWM`, the peak) of `pid` in MB, from /proc (psutil is not in the venv)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name} for pid {pid}")


@dataclass(frozen=True)
class Change:
    account: str
    room: str
    ts: int
    added: bool
    restricted: bool


class MemberMix:
    """Deterministic member events: adds over random (account, room), every 5th removes the oldest membership."""

    def __init__(self, accounts: int, rooms: int, seed: int = 12) -> None:
        self.accounts, self.rooms = accounts, rooms
        self.rnd = random.Random(seed)
        self.live: collections.deque[tuple[str, str]] = collections.deque()
        self.base_ms = int(time.time() * 1000) - 3_600_000  # recent: inbox_mirror purges registers past a horizon
        self.count = 0

    def take(self, n: int) -> list[Change]:
        out = []
        for _ in range(n):
            i, self.count = self.count, self.count + 1
            if i % 5 == 4 and self.live:
                account, room = self.live.popleft()
                out.append(Change(account, room, self.base_ms + i, False, False))
                continue
            account, room = f"u{self.rnd.randrange(self.accounts)}", self.rnd.randrange(self.rooms)
            self.live.append((account, f"r{room}"))
            out.append(Change(account, f"r{room}", self.base_ms + i, True, room % 10 == 0))
        return out


@dataclass
class Row:
    events: int  # processed so far
    rss: float
    peak: float  # highest sample during the chunk
    rate: float  # events/s of the chunk
    flow_cpu: float  # CPU-s per 10k events
    store_cpu: float
    load: float


@dataclass
class Run:
    flow: str
    store: str
    rows: list[Row] = field(default_factory=list)
    hwm: float = 0.0


class Sampler:
    """The highest RSS seen since the last `take()`, sampled every `SAMPLE_S` on a background task."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(SAMPLE_S)

    def stop(self) -> None:
        self.task.cancel()

    def take(self) -> float:
        peak, self.peak = max(self.peak, rss_mb(self.pid)), 0.0
        return peak


@dataclass
class Servers:
    """`services.py info` of the servers used, and their state directory (pid files under `run/`)."""

    info: dict[str, Any]
    state: Path


async def search_sync_run(servers: Servers, mix: MemberMix, events: int, chunk: int, env: dict[str, str]) -> Run:
    es = es_client(servers.info, request_timeout=120)
    site = await open_site(servers.info, es)
    install(es, site.indexes)
    run = Run("search_sync", "ES")
    es_pid = _pid(servers, "es")
    js = site.nc.jetstream()
    sampler: Sampler | None = None

    def local(changes: list[Change]) -> list[tuple[str, bytes]]:
        return [
            (subjects.inbox_local(site.site, "member_added"), added(c.room, [c.account], c.ts, name=f"room {c.room}", hss=c.ts - 5 if c.restricted else 0))
            if c.added
            else (subjects.inbox_local(site.site, "member_removed"), removed(c.room, [c.account], c.ts))
            for c in changes
        ]

    try:
        flow = site.start_flow(**env)
        STARTED.append(flow)
        pid = flow.procs[0].pid
        await site.publish(local(mix.take(10)))  # warm-up: the flow is up, connected and has written once
        await site.drain(timeout=300)
        run.rows.append(Row(0, rss_mb(pid), rss_mb(pid), 0, 0, 0, os.getloadavg()[0]))
        print(f"[search_sync] site {site.site}, flow pid {pid}, start RSS {run.rows[0].rss:.1f} MB", flush=True)
        sampler = Sampler(pid)

        async def one_chunk(n: int) -> None:
            await site.publish(local(mix.take(n)), chunk=1000)
            await site.drain(timeout=3600)
            await js.purge_stream(names.inbox_stream(site.site))  # the durable is drained: JetStream keeps one chunk at most

        await _chunks(run, pid, es_pid, sampler, events, chunk, one_chunk)
        run.hwm = rss_mb(pid, "VmHWM")
    finally:
        if sampler is not None:
            sampler.stop()  # before the flow stops: it reads the flow's /proc
        await close_site(site)
        es.close()
    return run


def inbox_mirror_run(servers: Servers, mix: MemberMix, events: int, chunk: int, env: dict[str, str]) -> Run:
    run = Run("inbox_mirror", "FerretDB")
    fdb_pid = _pid(servers, "ferretdb")
    with mirror_site(servers.info) as site:
        site.users([f"u{i}" for i in range(mix.accounts)])

        def items(changes: list[Change]) -> list[Any]:
            return [
                mirror_add(c.room, [c.account], c.ts, name=f"room {c.room}", hss=c.ts - 5 if c.restricted else 0) if c.added else mirror_remove(c.room, [c.account], c.ts)
                for c in changes
            ]

        flow = site.flow(**env).start()
        STARTED.append(flow)
        try:
            pid = flow.procs[0].pid
            site.publish(items(mix.take(10)))
            site.drained(timeout=300)
            run.rows.append(Row(0, rss_mb(pid), rss_mb(pid), 0, 0, 0, os.getloadavg()[0]))
            print(f"[inbox_mirror] site {site.site}, flow pid {pid}, start RSS {run.rows[0].rss:.1f} MB", flush=True)

            async def sampled() -> None:  # MirrorSite runs its own loop: sample on it, between its calls
                sampler = Sampler(pid)

                async def one_chunk(n: int) -> None:
                    await asyncio.to_thread(_mirror_chunk, site, items(mix.take(n)))

                try:
                    await _chunks(run, pid, fdb_pid, sampler, events, chunk, one_chunk)
                finally:
                    sampler.stop()

            asyncio.run(sampled())
            run.hwm = rss_mb(pid, "VmHWM")
        finally:
            flow.stop()
    return run


def _mirror_chunk(site: Any, items: list[Any]) -> None:
    site.publish(items)
    site.drained(timeout=3600)
    for stream in (names.inbox_stream(site.site), names.outbox_stream(site.other)):  # both hold the chunk
        site.run(site.js.purge_stream(stream))


async def _chunks(run: Run, pid: int, store_pid: int, sampler: Sampler, events: int, chunk: int, one_chunk: Callable[[int], Any]) -> None:
    done = 0
    while done < events:
        n = min(chunk, events - done)
        cpu0, store0, t0 = process_cpu_s(pid), process_cpu_s(store_pid), time.perf_counter()
        await one_chunk(n)
        seconds = time.perf_counter() - t0
        done += n
        cpu, store = process_cpu_s(pid) - cpu0, process_cpu_s(store_pid) - store0
        row = Row(done, rss_mb(pid), sampler.take(), n / seconds, per_10k(cpu, n), per_10k(store, n), os.getloadavg()[0])
        run.rows.append(row)
        print(f"[{run.flow}] {_line(row, run.rows[-2].rss)}", flush=True)


def _pid(servers: Servers, server: str) -> int:
    run = servers.state / "run"
    path = run / "es" / "jvm.pid" if server == "es" else run / f"{server}.pid"  # `elasticsearch -d` leaves the JVM's pid there
    return int(path.read_text().split()[0])


def _shared_info() -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "services.py"), "info"], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def slope(rows: list[Row]) -> float:
    """MB per 100k events: least squares over the checkpoints after the first chunk."""
    points = [(r.events / 100_000, r.rss) for r in rows[2:]]
    if len(points) < 2:
        return float("nan")
    mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


HEADER = f"{'events':>9} {'RSS MB':>7} {'Δ MB':>6} {'peak MB':>8} {'ev/s':>6} {'flow CPU-s/10k':>14} {'store CPU-s/10k':>15} {'load':>5}"


def _line(row: Row, before: float) -> str:
    return (
        f"{row.events:>9,} {row.rss:>7.1f} {row.rss - before:>+6.1f} {row.peak:>8.1f} {row.rate:>6.0f}"
        f" {row.flow_cpu:>14.2f} {row.store_cpu:>15.2f} {row.load:>5.1f}"
    )


def report(run: Run, accounts: int, rooms: int, chunk: int) -> None:
    rows = run.rows
    work = rows[1:]
    total = sum(r.events - p.events for r, p in zip(work, rows))
    seconds = sum((r.events - p.events) / r.rate for r, p in zip(work, rows))
    print(f"\n{run.flow}, 1 process: {total:,} member events in backlogs of {chunk:,} ({accounts:,} accounts, {rooms:,} rooms, every 5th a remove)")
    print(f"store CPU: {run.store}; row 0 = start (idle, after a 10-event warm-up); load = 1-min load average (2 cores)")
    print(HEADER)
    for row, before in zip(rows, [rows[0].rss, *(r.rss for r in rows)]):
        print(_line(row, before))
    flow_cpu = sum(r.flow_cpu * (r.events - p.events) for r, p in zip(work, rows)) / max(total, 1)
    store_cpu = sum(r.store_cpu * (r.events - p.events) for r, p in zip(work, rows)) / max(total, 1)
    print(
        f"RSS start {rows[0].rss:.1f} MB, end {rows[-1].rss:.1f} MB, peak (VmHWM) {run.hwm:.1f} MB; slope {slope(rows):+.2f} MB per 100k"
        f" (after the first chunk); {total / seconds:,.0f} events/s ({seconds:,.0f} s publish to drained, summed over chunks);"
        f" CPU-s/10k flow {flow_cpu:.2f} + {run.store} {store_cpu:.2f}"
    )


def main() -> None:
    cli = argparse.ArgumentParser(prog="bench.flow_memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--events", type=int, default=1_000_000)
    cli.add_argument("--chunk", type=int, default=100_000, help="events per backlog and per checkpoint")
    cli.add_argument("--accounts", type=int, default=20_000)
    cli.add_argument("--rooms", type=int, default=5_000)
    cli.add_argument("--flows", default="search_sync", help="comma-separated: search_sync, inbox_mirror")
    cli.add_argument("--mirror-events", type=int, default=0, help="inbox_mirror's own event count (default: --events)")
    cli.add_argument("--private", action="store_true", help="a private set of servers instead of the running dev servers")
    cli.add_argument("--flow-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment of the flow process")
    args = cli.parse_args()
    flows = [f.strip() for f in args.flows.split(",") if f.strip()]
    if set(flows) - {"search_sync", "inbox_mirror"}:
        cli.error(f"--flows: search_sync and/or inbox_mirror, not {args.flows!r}")
    env = dict(pair.split("=", 1) for pair in args.flow_env if "=" in pair)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the private servers (finally)
    private = PrivateServers("flow-memory") if args.private else None
    runs: list[Run] = []
    try:
        if private is not None:
            print(f"starting private servers in {private.state} ...", flush=True)
            servers = Servers(private.up().info, private.state)
        else:
            servers = Servers(_shared_info(), Path(os.environ.get("CHATFED_STATE_DIR") or REPO / ".local"))
        for flow in flows:
            mix = MemberMix(args.accounts, args.rooms)
            if flow == "search_sync":
                runs.append(asyncio.run(search_sync_run(servers, mix, args.events, args.chunk, env)))
            else:
                runs.append(inbox_mirror_run(servers, mix, args.mirror_events or args.events, args.chunk, env))
    finally:
        for flow_process in STARTED:  # a SIGTERM may skip the runs' own cleanup (their test sites stay): never leave a flow running
            flow_process.stop()
        if private is not None:
            private.close()
    for run in runs:
        report(run, args.accounts, args.rooms, args.chunk)


if __name__ == "__main__":
    main()
