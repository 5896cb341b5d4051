"""A realistic data set for the MongoDB-protocol store (issue 12, item 5): 20k users, 5k rooms, 100k subscriptions.

`load(db)` fills a fresh database with fast unordered `insert_many` calls (indexes created first, as a running site
has them). Rooms are channels of 20 members on average, homed on `site`; users `u{i}` (accounts `acct{i}`) belong to
`sect{i % 200}` / `dept{i % 1000}`; every subscription has its `room_members` row. Accounts and rooms are disjoint from
what the benches create, so the loaded documents only make the collections large.

Run alone: `.venv/bin/python -m bench.realistic_data DBNAME` (prints the load time per collection).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from connectors.mongo import Document, ensure_indexes
from testkit.clients import mongo_client
from testkit.support import REPO

USERS = 20_000
ROOMS = 5_000
SUBSCRIPTIONS = 100_000
BATCH = 2_000
TS = 1767225600000


def users(site: str) -> Iterator[Document]:
    for i in range(USERS):
        yield {"_id": f"u{i}", "account": f"acct{i}", "siteId": site, "sectId": f"sect{i % 200}", "deptId": f"dept{i % 1000}", "name": f"User {i}"}


def rooms(site: str) -> Iterator[Document]:
    per_room = SUBSCRIPTIONS // ROOMS
    for r in range(ROOMS):
        yield {"_id": f"lroom{r}", "name": f"room {r}", "type": "channel", "siteId": site, "createdAt": TS, "updatedAt": TS, "userCount": per_room, "appCount": 0}


def memberships() -> Iterator[tuple[int, int]]:
    """(room, user) pairs: room r holds users r*7+k*13 (mod USERS) for k < 20, all distinct within a room."""
    per_room = SUBSCRIPTIONS // ROOMS
    for r in range(ROOMS):
        for k in range(per_room):
            yield r, (r * 7 + k * 13) % USERS


def subscriptions(site: str) -> Iterator[Document]:
    for n, (r, u) in enumerate(memberships()):
        yield {
            "_id": f"{n:032x}", "u": {"_id": f"u{u}", "account": f"acct{u}", "isBot": False}, "roomId": f"lroom{r}", "siteId": site,
            "roomType": "channel", "name": f"room {r}", "roles": ["owner"] if n % 20 == 0 else ["member"], "isSubscribed": False,
            "joinedAt": TS + n,
        }


def room_members() -> Iterator[Document]:
    for n, (r, u) in enumerate(memberships()):
        yield {"_id": f"rm{n:030x}", "rid": f"lroom{r}", "ts": TS + n, "member": {"id": f"u{u}", "type": "individual", "account": f"acct{u}"}}


def _insert(db: Database[Document], name: str, docs: Iterator[Document]) -> int:
    batch: list[Document] = []
    count = 0
    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH:
            db[name].insert_many(batch, ordered=False)
            count, batch = count + len(batch), []
    if batch:
        db[name].insert_many(batch, ordered=False)
        count += len(batch)
    return count


def load(db: Database[Document], site: str = "home") -> dict[str, tuple[int, float]]:
    """Fill `db` (fresh); returns {collection: (documents, seconds)}."""
    ensure_indexes(db)
    took: dict[str, tuple[int, float]] = {}
    for name, docs in (("users", users(site)), ("rooms", rooms(site)), ("subscriptions", subscriptions(site)), ("room_members", room_members())):
        started = time.perf_counter()
        took[name] = (_insert(db, name, docs), time.perf_counter() - started)
    return took


def dev_mongo() -> MongoClient[Document]:
    """The dev FerretDB (services.py info), as its user."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "services.py"), "info"], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return mongo_client(info)


if __name__ == "__main__":
    client = dev_mongo()
    name = sys.argv[1] if len(sys.argv) > 1 else f"bench_real_{int(time.time())}"
    for coll, (n, s) in load(client[name]).items():
        print(f"{name}.{coll}: {n} docs in {s:.1f} s ({n / s:,.0f} docs/s)")
