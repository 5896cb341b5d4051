"""inbox_mirror on a member_added backlog beside the raw store's rate for the same documents, on empty and loaded databases.

Usage: .venv/bin/python -m bench.inbox_mirror_backlog [events] [--loaded] [--baseline N] [--upserts N]

- flow: the inbox_mirror process drains `events` channel adds (one account each, distinct (room, account) pairs);
- raw insert_many: the subscription documents the flow wrote, inserted by hand into a fresh database in chunks of
  1,000 (unordered): the best the store does for these documents;
- raw upserts: pymongo bulk_write of UpdateOne(filter room+account, $setOnInsert, upsert) for the first N of them
  (each statement is a filtered write: on FerretDB/SQLite a collection scan, so N stays small on a loaded database);
- baseline (optional): the reference's one-message-at-a-time fetch + find user + upsert + ack.
`--loaded` first fills each database with bench/realistic_data.py (20k users, 5k rooms, 100k subscriptions).
CPU-seconds per 10k events: of the flow process and of FerretDB (pid in .local/run/ferretdb.pid) during each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pymongo import MongoClient, UpdateOne

from bench.cpu import per_10k, process_cpu_s
from bench.realistic_data import load
from connectors.mongo import Document, ensure_indexes
from schemas import names
from testkit.clients import mongo_client
from testkit.mirror_site import add, mirror_site
from testkit.support import REPO

ACCOUNTS = [f"user{i}" for i in range(50)]


def ferretdb_cpu() -> float:
    pid = (REPO / ".local" / "run" / "ferretdb.pid").read_text().strip()
    return process_cpu_s(int(pid))


def backlog(events: int, base_ms: int) -> list:
    """Channel adds of one account each, over distinct (room, account) pairs: the worst case for coalescing."""
    return [add(f"room{i // len(ACCOUNTS)}", [ACCOUNTS[i % len(ACCOUNTS)]], base_ms + i) for i in range(events)]


async def baseline(site, limit: int) -> float:
    js = site.js
    sub = await js.pull_subscribe_bind(durable=names.INBOX_WORKER_DURABLE, stream=names.inbox_stream(site.site))
    users, subs = site.db.users, site.db.subscriptions
    from schemas.envelope import decode_envelope
    from schemas.events import decode_member_added

    done, started = 0, time.perf_counter()
    while done < limit:
        for msg in await sub.fetch(100, timeout=5):
            event = decode_member_added(decode_envelope(msg.data).payload)
            for account in event.accounts:
                user = users.find_one({"account": account})
                doc = {"u": {"_id": user["_id"], "account": account}, "roomId": event.room_id, "name": event.room_name, "joinedAt": event.joined_at}
                subs.update_one({"roomId": event.room_id, "u.account": account}, {"$setOnInsert": doc}, upsert=True)
            await msg.ack()
            done += 1
    return done / (time.perf_counter() - started)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, FerretDB CPU seconds) of `fn()`."""
    cpu, started = ferretdb_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - started, ferretdb_cpu() - cpu


def raw_rates(mongo: MongoClient[Document], docs: list[Document], upserts: int, loaded: bool) -> dict[str, tuple[int, float, float]]:
    """{method: (documents, seconds, FerretDB CPU-s)} writing `docs` by hand into fresh databases."""
    out: dict[str, tuple[int, float, float]] = {}
    for method in ("insert_many", "upserts"):
        db = mongo[f"bench_raw_{os.getpid()}_{method}"]
        mongo.drop_database(db.name)
        (load if loaded else ensure_indexes)(db)
        try:
            if method == "insert_many":
                out[method] = (len(docs), *timed(lambda: [db.subscriptions.insert_many(docs[i : i + 1000], ordered=False) for i in range(0, len(docs), 1000)]))
            elif upserts:
                some = docs[:upserts]
                ops = [UpdateOne({"roomId": d["roomId"], "u.account": d["u"]["account"]}, {"$setOnInsert": d}, upsert=True) for d in some]
                out[method] = (len(some), *timed(lambda: db.subscriptions.bulk_write(ops, ordered=False)))
        finally:
            mongo.drop_database(db.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("events", type=int, nargs="?", default=10_000)
    parser.add_argument("--loaded", action="store_true", help="fill each database with the realistic data set first")
    parser.add_argument("--baseline", type=int, default=0, help="events for the one-at-a-time baseline (0: skip)")
    parser.add_argument("--upserts", type=int, default=None, help="documents for the raw upsert bulk (default 1000, 20 loaded)")
    args = parser.parse_args()
    events, upserts = args.events, args.upserts if args.upserts is not None else (20 if args.loaded else 1000)
    servers = json.loads(subprocess.check_output([sys.executable, str(REPO / "scripts" / "services.py"), "info"]))
    base_ms = int(time.time() * 1000)
    rows: list[tuple[str, int, float, float, float]] = []  # label, docs, seconds, flow CPU, FerretDB CPU
    with mirror_site(servers) as site:
        if args.loaded:
            load(site.db, site.site)
        site.users(ACCOUNTS)
        site.publish(backlog(events, base_ms))  # through the peer's OUTBOX, as in production
        flow = site.flow().start()
        fdb = ferretdb_cpu()
        started = time.perf_counter()
        try:
            site.drained(timeout=3600)
            elapsed = time.perf_counter() - started  # includes process start-up (~1 s)
            flow_cpu = process_cpu_s(flow.procs[0].pid)  # includes start-up (imports, connections)
            fdb = ferretdb_cpu() - fdb
        finally:
            flow.stop()
        docs = list(site.db.subscriptions.find({"u.account": {"$in": ACCOUNTS}}))
        assert len(docs) == events, f"{len(docs)} subscriptions written for {events} events"
        rows.append(("inbox_mirror flow (incl. ~1 s start-up)", events, elapsed, flow_cpu, fdb))
    # outside the site: the raw phase blocks for minutes on a loaded store, and the site's NATS connection would time out
    mongo: MongoClient[Document] = mongo_client(servers)
    for method, (n, s, cpu) in raw_rates(mongo, [{k: v for k, v in d.items() if k != "shapedBy"} for d in docs], upserts, args.loaded).items():
        label = "raw insert_many, 1,000 per call" if method == "insert_many" else "raw bulk_write UpdateOne(upsert)"
        rows.append((label, n, s, 0.0, cpu))
    if args.baseline:
        with mirror_site(servers) as base_site:
            if args.loaded:
                load(base_site.db, base_site.site)
            base_site.users(ACCOUNTS)
            base_site.publish(backlog(args.baseline, base_ms))
            cpu0, fdb0 = time.process_time(), ferretdb_cpu()
            rate = base_site.run(baseline(base_site, args.baseline))
            rows.append(("baseline: fetch + find user + upsert + ack, one at a time", args.baseline, args.baseline / rate, time.process_time() - cpu0, ferretdb_cpu() - fdb0))
    raw = rows[1][1] / rows[1][2]
    print(f"inbox_mirror backlog, {'loaded (20k users, 5k rooms, 100k subscriptions)' if args.loaded else 'empty'} database; load average {os.getloadavg()[0]:.2f}")
    print()
    print("| writer | docs | seconds | docs/s | flow / raw insert_many (time per doc) | consumer CPU-s per 10k | FerretDB CPU-s per 10k |")
    print("|---|---|---|---|---|---|---|")
    for label, n, s, cpu, f in rows:
        print(f"| {label} | {n} | {s:.2f} | {n / s:,.0f} | {raw / (n / s):.2f}x | {per_10k(cpu, n):.1f} | {per_10k(f, n):.1f} |")


if __name__ == "__main__":
    main()
