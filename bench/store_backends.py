"""FerretDB on SQLite against FerretDB on PostgreSQL, in one run, for what room_worker and inbox_mirror do (issue 12, item 5).

Usage: .venv/bin/python -m bench.store_backends [--backend sqlite|postgresql ...] [--quick]

Per backend, on a private NATS + FerretDB (+ PostgreSQL) of its own (bench/stores.py; the dev servers are untouched):
1. bench/query_plans.py: plan and timing of every query shape on the realistic data set (bench/realistic_data.py);
2. bench/inbox_mirror_backlog.py --loaded: the flow draining a member_added backlog beside raw insert_many / upserts;
3. bench/room_worker_bench.py: a backlog of creates on empty collections, then on loaded ones followed by creates
   paced at 100/s (command -> result p50/p99), with the default CHATFED_FLUSH_MS and with 25 ms.
Then one table of every workload on both backends: rates, the flow's time per document over raw insert_many, latency,
CPU-seconds per 10k of the flow, FerretDB and PostgreSQL, load average, and PostgreSQL's speed over SQLite's.
SQLite gets fewer loaded room commands: it scans the collections for every batch (seconds each).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench import inbox_mirror_backlog as mirror
from bench import query_plans, room_worker_bench
from bench.cpu import per_10k
from bench.stores import BACKENDS, store_servers

Row = tuple[str, str, int, float, str, str, str, float, dict[str, float], float]  # workload, backend, n, rate, vs raw, p50, p99, flow CPU, store CPU, load


def measure(backend: str, quick: bool) -> tuple[list[str], list[Row]]:
    """(the detailed tables, the summary rows) of one backend."""
    scale = 0.1 if quick else 1.0
    slow = backend == "sqlite"
    events, empty, backlog, paced = int(10_000 * scale), int(1_000 * scale), 20 if slow else int(500 * scale), 30 if slow else int(1_000 * scale)
    text: list[str] = [f"## FerretDB on {backend}", ""]
    rows: list[Row] = []
    with store_servers(backend) as store:
        started = time.perf_counter()
        text += [*query_plans.table(query_plans.loaded(store), store), ""]
        m = mirror.run(store, events, loaded=True, upserts=20 if slow else 1_000)
        text += [mirror.report(m), ""]
        for row in m.rows:
            vs = f"{m.rows[0].rate / row.rate:.2f}x"
            rows.append((f"inbox_mirror loaded: {row.label}", backend, row.docs, row.rate, vs, "", "", row.flow_cpu, row.store_cpu, m.load))
        runs = [(False, empty, 0, None), (True, backlog, paced, None)] + ([] if slow else [(True, 0, paced, 25)])
        for loaded, n, m_paced, flush_ms in runs:
            r = asyncio.run(room_worker_bench.run(store, n, loaded, m_paced, with_baseline=False, flush_ms=flush_ms))
            text += [room_worker_bench.report(r), ""]
            data = "loaded" if loaded else "empty"
            if n:
                rows.append((f"room_worker {data}: backlog of creates", backend, n, r.rate, "", "", "", r.flow_cpu, r.store_cpu, r.load))
            if r.paced:
                p = r.paced
                flush = f", CHATFED_FLUSH_MS={flush_ms}" if flush_ms else ""
                rows.append((f"room_worker {data}: creates paced at 100/s{flush}", backend, p.n, p.achieved, "", f"{p.pct(0.5):,.0f}", f"{p.pct(0.99):,.0f}", p.flow_cpu, p.store_cpu, p.load))
        text.append(f"({backend}: {time.perf_counter() - started:.0f} s)")
    return text, rows


def summary(rows: list[Row]) -> list[str]:
    rates = {(r[0], r[1]): r[3] for r in rows}
    lines = [
        "| workload | backend | n | per s | time per doc / raw insert_many | p50 ms | p99 ms | flow CPU-s per 10k | FerretDB CPU-s per 10k "
        "| PostgreSQL CPU-s per 10k | load average | PostgreSQL / SQLite (speed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, backend, n, rate, vs, p50, p99, flow, store, load in sorted(rows, key=lambda r: (r[0], r[1])):
        pg, lite = rates.get((workload, "postgresql")), rates.get((workload, "sqlite"))
        speed = f"{pg / lite:,.1f}x" if pg and lite and backend == "postgresql" else ""
        pgc = f"{per_10k(store['postgres'], n):.1f}" if "postgres" in store else "-"
        lines.append(
            f"| {workload} | {backend} | {n} | {rate:,.1f} | {vs} | {p50} | {p99} | {per_10k(flow, n):.1f} | {per_10k(store['ferretdb'], n):.1f} "
            f"| {pgc} | {load:.2f} | {speed} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these (default: both)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the events and commands (a smoke run)")
    args = parser.parse_args()
    rows: list[Row] = []
    for backend in args.backend or BACKENDS:
        text, got = measure(backend, args.quick)
        print("\n".join(text), flush=True)
        rows += got
    print("\n## Both backends\n")
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
