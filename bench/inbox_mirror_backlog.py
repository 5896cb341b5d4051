"""inbox_mirror on a member_added backlog beside the raw store's rate for the same documents, on empty and loaded databases.

Usage: .venv/bin/python -m bench.inbox_mirror_backlog [events] [--loaded] [--baseline N] [--upserts N] [--backend sqlite|postgresql]

- flow: the inbox_mirror process drains `events` channel adds (one account each, distinct (room, account) pairs);
- raw insert_many: the subscription documents the flow wrote, inserted by hand into a fresh database in chunks of
  1,000 (unordered): the best the store does for these documents;
- raw insert_many with guards: the same, after the guard versions the flow wrote (docs/inbox_mirror.md: one per add,
  carrying a copy of the subscription): every document the flow must write, so the best it could do;
- raw upserts: pymongo bulk_write of UpdateOne(filter room+account, $setOnInsert, upsert) for the first N of them
  (each statement a filtered write: on FerretDB/SQLite a collection scan, so N stays small there on a loaded database);
- baseline (optional): the reference's one-message-at-a-time fetch + find user + upsert + ack.
`--loaded` first fills each database with bench/realistic_data.py (20k users, 5k rooms, 100k subscriptions).
`--backend`: on a private NATS + FerretDB with that backend (bench/stores.py) instead of the dev servers.
CPU-seconds per 10k events: of the flow process, of FerretDB and of PostgreSQL (with its backends) during each phase.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection

from bench.cpu import per_10k, process_cpu_s
from bench.realistic_data import load
from bench.stores import Store, cpu_delta, store_servers
from connectors.mongo import Document, ensure_indexes, find_in
from dataflows.inbox_mirror.rules import guard_id
from schemas import names
from testkit.clients import mongo_client
from testkit.mirror_site import add, mirror_site

ACCOUNTS = [f"user{i}" for i in range(50)]


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


@dataclass(frozen=True)
class Row:
    label: str
    docs: int
    seconds: float
    flow_cpu: float
    store_cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.docs / self.seconds


@dataclass
class MirrorRun:
    backend: str
    events: int
    loaded: bool
    rows: list[Row] = field(default_factory=list)  # raw insert_many first, then the flow
    load: float = 0.0

    @property
    def ratio(self) -> float:
        """Time per document of the flow over that of raw insert_many."""
        return self.rows[0].rate / self.rows[1].rate


def timed(store: Store, fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """(wall seconds, the store's CPU seconds) of `fn()`."""
    cpu, started = store.cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - started, cpu_delta(cpu, store.cpu())


def _insert(coll: Collection[Document], docs: list[Document]) -> None:
    for i in range(0, len(docs), 1000):
        coll.insert_many(docs[i : i + 1000], ordered=False)


def raw_rates(store: Store, docs: list[Document], guards: list[Document], upserts: int, loaded: bool) -> list[Row]:
    """Writing `docs` (and `guards`) by hand into fresh databases (loaded like the flow's when `loaded`)."""
    mongo: MongoClient[Document] = mongo_client(store.servers, socketTimeoutMS=600_000)
    rows = []
    for method in ("insert_many", "with_guards", "upserts"):
        db = mongo[f"bench_raw_{os.getpid()}_{method}"]
        mongo.drop_database(db.name)
        (load if loaded else ensure_indexes)(db)
        try:
            if method == "insert_many":
                s, cpu = timed(store, lambda: _insert(db.subscriptions, docs))
                rows.append(Row("raw insert_many, 1,000 per call", len(docs), s, 0.0, cpu))
            elif method == "with_guards":
                s, cpu = timed(store, lambda: (_insert(db.membership_guards, guards), _insert(db.subscriptions, docs)))
                rows.append(Row("raw insert_many of guard versions + subscriptions (per subscription)", len(docs), s, 0.0, cpu))
            elif upserts:
                ops = [UpdateOne({"roomId": d["roomId"], "u.account": d["u"]["account"]}, {"$setOnInsert": d}, upsert=True) for d in docs[:upserts]]
                s, cpu = timed(store, lambda: db.subscriptions.bulk_write(ops, ordered=False))
                rows.append(Row("raw bulk_write UpdateOne(upsert)", len(ops), s, 0.0, cpu))
        finally:
            mongo.drop_database(db.name)
    return rows


def run(store: Store, events: int, loaded: bool, upserts: int, baseline_events: int = 0) -> MirrorRun:
    servers = store.servers
    out = MirrorRun(store.backend, events, loaded)
    base_ms = int(time.time() * 1000)
    with mirror_site(servers) as site:
        if loaded:
            load(site.db, site.site)
        site.users(ACCOUNTS)
        site.publish(backlog(events, base_ms))  # through the peer's OUTBOX, as in production
        flow = site.flow().start()
        store_cpu = store.cpu()
        started = time.perf_counter()
        try:
            site.drained(timeout=3600)
            elapsed = time.perf_counter() - started  # includes process start-up (~1 s)
            flow_cpu = process_cpu_s(flow.procs[0].pid)  # includes start-up (imports, connections)
            store_cpu = cpu_delta(store_cpu, store.cpu())
        finally:
            flow.stop()
        out.load = os.getloadavg()[0]
        docs = find_in(site.db.subscriptions, "roomId", {f"room{i // len(ACCOUNTS)}" for i in range(events)})
        assert len(docs) == events, f"{len(docs)} subscriptions written for {events} events"
        guards = find_in(site.db.membership_guards, "key", [guard_id(d["roomId"], d["u"]["account"]) for d in docs])
        flow_row = Row("inbox_mirror flow (incl. ~1 s start-up)", events, elapsed, flow_cpu, store_cpu)
    # outside the site: the raw phase blocks for minutes on a loaded store, and the site's NATS connection would time out
    raw = raw_rates(store, [{k: v for k, v in d.items() if k != "shapedBy"} for d in docs], guards, upserts, loaded)
    out.rows = [raw[0], flow_row, *raw[1:]]
    if baseline_events:
        with mirror_site(servers) as base_site:
            if loaded:
                load(base_site.db, base_site.site)
            base_site.users(ACCOUNTS)
            base_site.publish(backlog(baseline_events, base_ms))
            cpu0, store0 = time.process_time(), store.cpu()
            rate = base_site.run(baseline(base_site, baseline_events))
            out.rows.append(
                Row("baseline: fetch + find user + upsert + ack, one at a time", baseline_events, baseline_events / rate,
                    time.process_time() - cpu0, cpu_delta(store0, store.cpu()))
            )
    return out


def report(r: MirrorRun) -> str:
    data = "loaded (20k users, 5k rooms, 100k subscriptions)" if r.loaded else "empty"
    stores = list(r.rows[0].store_cpu)
    raw = r.rows[0].rate
    lines = [
        f"inbox_mirror backlog on FerretDB/{r.backend}, {data} database; load average {r.load:.2f}",
        "",
        "| writer | docs | seconds | docs/s | time per doc / raw insert_many | consumer CPU-s per 10k | "
        + " | ".join(f"{k} CPU-s per 10k" for k in stores) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(stores),
    ]
    for row in r.rows:
        cells = " | ".join(f"{per_10k(row.store_cpu[k], row.docs):.1f}" for k in stores)
        lines.append(f"| {row.label} | {row.docs} | {row.seconds:.2f} | {row.rate:,.0f} | {raw / row.rate:.2f}x | {per_10k(row.flow_cpu, row.docs):.1f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("events", type=int, nargs="?", default=10_000)
    parser.add_argument("--loaded", action="store_true", help="fill each database with the realistic data set first")
    parser.add_argument("--baseline", type=int, default=0, help="events for the one-at-a-time baseline (0: skip)")
    parser.add_argument("--upserts", type=int, default=None, help="documents for the raw upsert bulk (default 1000; 20 loaded on SQLite)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), help="a private NATS + FerretDB on this backend (default: the dev servers)")
    args = parser.parse_args()
    with store_servers(args.backend) as store:
        upserts = args.upserts if args.upserts is not None else (20 if args.loaded and store.backend == "sqlite" else 1000)
        print(report(run(store, args.events, args.loaded, upserts, args.baseline)))


if __name__ == "__main__":
    main()
