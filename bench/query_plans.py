"""Is each query room_worker and inbox_mirror make served by an index? Plan and timing per query shape and backend.

Usage: .venv/bin/python -m bench.query_plans [--backend sqlite|postgresql ...] [DBNAME [MONGO_URI]]
  With `--backend` (repeatable): a private set per backend (bench/stores.py), the realistic data set loaded into it
  (bench/realistic_data.py), one table each. Without: DBNAME (loaded by `python -m bench.realistic_data DBNAME`) on the
  dev FerretDB or MONGO_URI.

Per shape (as dataflows/room_worker/store_mongo.py and dataflows/inbox_mirror/writer.py send it): wall ms of one run,
`filterPushdown` (the filter reached the backend as SQL) and the backend's plan (SQLite `SCAN` / PostgreSQL `Seq Scan`
= every row read; an index shows `SEARCH ... USING INDEX` / `Bitmap Index Scan <index>`). On PostgreSQL twice more:
without the GIN twins of FerretDB's indexes (scripts/localservers/postgres.sql; put back after), and as a stock
FerretDB 1.24 runs it, i.e. without our `$in` pushdown (scripts/ferretdb/postgresql-in-pushdown.patch): the filter
wrapped in a top-level `$and`, which FerretDB never pushes down, so it decodes the whole collection in Go.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from bench.realistic_data import load
from bench.stores import Store, store_servers
from connectors.mongo import Document, ensure_indexes
from testkit.clients import mongo_client

SUB_ID = f"{5:032x}"
SHAPES: list[tuple[str, str, Document]] = [
    ("room_worker members / recount", "subscriptions", {"roomId": "lroom42"}),
    ("room_worker members_of", "subscriptions", {"roomId": {"$in": ["lroom42", "lroom43"]}}),
    ("room_worker delete_subscriptions, drop_owner", "subscriptions", {"roomId": "lroom42", "u.account": {"$in": ["acct294"]}}),
    ("inbox_mirror _find_subs, _apply_roles", "subscriptions", {"roomId": {"$in": ["lroom42"]}, "u.account": {"$in": ["acct294"]}}),
    ("(reference) subscription by _id", "subscriptions", {"_id": SUB_ID}),
    ("inbox_mirror _delete_ids (subscriptions)", "subscriptions", {"_id": {"$in": [SUB_ID]}}),
    ("room_worker users_by_accounts, inbox_mirror _user_ids", "users", {"account": {"$in": ["acct1", "acct2"]}}),
    ("room_worker org_members (1 of 2)", "users", {"sectId": {"$in": ["sect3"]}}),
    ("room_worker org_members (2 of 2)", "users", {"deptId": {"$in": ["dept3"]}}),
    ("(before) org_members as one `$or`", "users", {"$or": [{"sectId": {"$in": ["sect3"]}}, {"deptId": {"$in": ["dept3"]}}]}),
    ("room_worker room / set_counts", "rooms", {"_id": "lroom42"}),
    ("room_worker rooms", "rooms", {"_id": {"$in": ["lroom42"]}}),
    ("room_worker orgs_of", "room_members", {"rid": {"$in": ["lroom42"]}, "member.type": "org"}),
    ("room_worker room_orgs, individual_ids", "room_members", {"rid": "lroom42", "member.type": "org"}),
    ("inbox_mirror _read_guards", "membership_guards", {"key": {"$in": ["lroom42 acct294"]}}),
    ("inbox_mirror _advance (room_names)", "room_names", {"_id": {"$in": ["lroom42"]}}),
]


def plan_text(plan: Any) -> str:
    """The node types of a plan: SQLite's `detail` lines, PostgreSQL's `Node Type`s (+ index names)."""
    if isinstance(plan, list):
        return "; ".join(str(p).split("detail=")[-1] for p in plan)
    out: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        out.append(node.get("Node Type", "?") + (f" {node['Index Name']}" if "Index Name" in node else ""))
        for child in node.get("Plans", []):
            walk(child)

    if plan:
        walk(plan)
    return "; ".join(out)


def _run(db: Database[Document], coll: str, flt: Document) -> tuple[str, str]:
    """(wall ms of one run, "pushdown | plan")."""
    started = time.perf_counter()
    list(db[coll].find(flt))
    ms = (time.perf_counter() - started) * 1000
    explain = db.command("explain", {"find": coll, "filter": flt})
    return f"{ms:,.1f}", f"{explain.get('filterPushdown')} | {plan_text(explain.get('queryPlanner', {}).get('Plan'))}"


def _gin_twins(store: Store, schema: str, present: bool) -> None:
    if present:
        store.psql("SELECT count(chatfed_gin_twin(indexrelid)) FROM pg_index;")
    else:
        store.psql(f"SELECT format('DROP INDEX %I.%I', schemaname, indexname) FROM pg_indexes WHERE schemaname = '{schema}' AND indexname LIKE '%\\_gin' \\gexec")


def table(db: Database[Document], store: Store | None = None) -> list[str]:
    """The markdown table of every shape on `db` (loaded); `store` on PostgreSQL: without GIN twins, and as stock FerretDB."""
    pg = store is not None and store.backend == "postgresql"
    more = " ms, no GIN twins | plan, no GIN twins | ms, stock FerretDB | pushdown, plan, stock FerretDB |" if pg else ""
    lines = [
        f"{db.client.address} {db.name}: " + ", ".join(f"{c} {db[c].estimated_document_count()}" for c in ("users", "rooms", "subscriptions", "room_members")),
        "",
        f"| used by | collection | filter | ms | pushdown, plan |{more}",
        "|---|---|---|---|---|" + ("---|---|---|---|" if pg else ""),
    ]
    rows = [[used_by, coll, f"`{json.dumps(flt)}`", *_run(db, coll, flt)] for used_by, coll, flt in SHAPES]
    if pg:
        assert store is not None
        _gin_twins(store, db.name, present=False)
        try:
            for (_, coll, flt), row in zip(SHAPES, rows, strict=True):
                ms, plan = _run(db, coll, flt)
                row += [ms, plan.split(" | ", 1)[1]]
        finally:
            _gin_twins(store, db.name, present=True)
        for (_, coll, flt), row in zip(SHAPES, rows, strict=True):
            row += list(_run(db, coll, {"$and": [flt]}) if any("$in" in str(v) for v in flt.values()) else ("same", ""))
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def loaded(store: Store, name: str = "bench_plans") -> Database[Document]:
    """A fresh database `name` on `store` with the realistic data set, a guard register and a room name per room."""
    client: MongoClient[Document] = mongo_client(store.servers, socketTimeoutMS=600_000)
    client.drop_database(name)
    db = client[name]
    ensure_indexes(db)
    load(db)
    db.membership_guards.insert_many([{"_id": f"lroom{r} acct{r} 1", "key": f"lroom{r} acct{r}", "version": 1} for r in range(5_000)])
    db.room_names.insert_many([{"_id": f"lroom{r}", "version": 1, "ts": 1, "name": f"room {r}"} for r in range(5_000)])
    return db


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query_plans", description="Time and explain every query shape the flows use.")
    parser.add_argument("--backend", action="append", choices=("sqlite", "postgresql"), help="a private set on this backend, loaded here")
    parser.add_argument("database", nargs="?", help="without --backend: a database loaded by `python -m bench.realistic_data DBNAME`")
    parser.add_argument("uri", nargs="?", default=None, help="MongoDB URI (default: the dev FerretDB)")
    args = parser.parse_args()
    if args.backend:
        for backend in args.backend:
            with store_servers(backend) as store:
                print(f"\n## {backend}\n")
                print("\n".join(table(loaded(store), store)))
        return
    if not args.database:
        parser.error("DBNAME or --backend")
    with store_servers(None) as store:
        client: MongoClient[Document] = MongoClient(args.uri, socketTimeoutMS=600_000) if args.uri else mongo_client(store.servers, socketTimeoutMS=600_000)
        print("\n".join(table(client[args.database])))


if __name__ == "__main__":
    main()
