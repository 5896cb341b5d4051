"""Is each query room_worker and inbox_mirror make served by an index? FerretDB `explain` and timing, per backend.

Usage: .venv/bin/python -m bench.query_plans DBNAME [MONGO_URI]  (DBNAME loaded by `python -m bench.realistic_data DBNAME`)
Prints, per query shape: wall ms of one run, `filterPushdown` (the filter reached the backend as SQL at all) and the
backend's plan (SQLite `SCAN` / PostgreSQL `Seq Scan` = every row read; an index would show `SEARCH ... USING INDEX` /
`Index Scan`). Shapes as in dataflows/room_worker/store_mongo.py and dataflows/inbox_mirror/writer.py.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pymongo import MongoClient

from bench.realistic_data import dev_mongo

SUB_ID = f"{5:032x}"
QUERIES: list[tuple[str, str, dict[str, Any]]] = [
    ("room_worker members / recount", "subscriptions", {"roomId": "lroom42"}),
    ("room_worker members_of", "subscriptions", {"roomId": {"$in": ["lroom42", "lroom43"]}}),
    ("room_worker delete_subscriptions, drop_owner", "subscriptions", {"roomId": "lroom42", "u.account": {"$in": ["acct294"]}}),
    ("inbox_mirror _find_subs, _apply_roles", "subscriptions", {"roomId": {"$in": ["lroom42"]}, "u.account": {"$in": ["acct294"]}}),
    ("(reference) subscription by _id", "subscriptions", {"_id": SUB_ID}),
    ("inbox_mirror _delete_ids (subscriptions)", "subscriptions", {"_id": {"$in": [SUB_ID]}}),
    ("room_worker users_by_accounts, inbox_mirror _user_ids", "users", {"account": {"$in": ["acct1", "acct2"]}}),
    ("room_worker org_members", "users", {"$or": [{"sectId": {"$in": ["sect3"]}}, {"deptId": {"$in": ["sect3"]}}]}),
    ("room_worker room / set_counts", "rooms", {"_id": "lroom42"}),
    ("room_worker rooms", "rooms", {"_id": {"$in": ["lroom42"]}}),
    ("room_worker orgs_of", "room_members", {"rid": {"$in": ["lroom42"]}, "member.type": "org"}),
    ("room_worker room_orgs, individual_ids", "room_members", {"rid": "lroom42", "member.type": "org"}),
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

    walk(plan)
    return "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query_plans", description="Time and explain every query shape the flows use.")
    parser.add_argument("database", help="a database loaded by `python -m bench.realistic_data DBNAME`")
    parser.add_argument("uri", nargs="?", default=None, help="MongoDB URI (default: the dev FerretDB)")
    args = parser.parse_args()
    client = MongoClient(args.uri) if args.uri else dev_mongo()
    db = client[args.database]
    print(f"{args.uri or 'dev FerretDB'} {db.name}: " + ", ".join(f"{c} {db[c].estimated_document_count()}" for c in ("users", "rooms", "subscriptions", "room_members")))
    print()
    print("| used by | collection | filter | ms (one run) | filterPushdown | plan |")
    print("|---|---|---|---|---|---|")
    for used_by, coll, flt in QUERIES:
        best = _timed(lambda: list(db[coll].find(flt)))
        explain = db.command("explain", {"find": coll, "filter": flt})
        plan = plan_text(explain.get("queryPlanner", {}).get("Plan"))
        print(f"| {used_by} | {coll} | `{json.dumps(flt)}` | {best * 1000:,.0f} | {explain.get('filterPushdown')} | {plan} |")


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
