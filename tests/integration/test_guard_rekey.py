"""Guards keyed with NUL by an older inbox_mirror (a store that can hold a NUL: FerretDB on SQLite) are re-keyed at start.

On a private FerretDB on SQLite (PostgreSQL, the default, cannot store a NUL, so it never had such guards).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.database import Database

from dataflows.inbox_mirror import rules as mirror
from dataflows.inbox_mirror.writer import GUARD_KEYS_MIGRATION, GUARDS, MIGRATIONS, SubscriptionWriter
from testkit.clients import mongo_client
from testkit.private_servers import private_servers


def _legacy_guard(room: str, account: str, version: int, state: str) -> dict[str, Any]:
    key = f"{room}\x00{account}"  # as written before the space separator
    return {"_id": f"{key} {version}", "key": key, "roomId": room, "account": account, "version": version, "state": state, "ts": version}


@pytest.fixture(scope="module")
def sqlite_db(servers: dict[str, Any]) -> Iterator[Database[Any]]:
    with private_servers("guard-rekey", own=("nats", "ferretdb"), shared=servers, backend="sqlite") as own:
        with mongo_client(own.info, serverSelectionTimeoutMS=10_000) as client:
            name = f"chatfed_test_{uuid.uuid4().hex[:10]}"
            yield client[name]
            client.drop_database(name)


def test_guards_keyed_with_nul_are_found_under_the_new_key_after_a_start(sqlite_db: Database[Any]) -> None:
    now = 10**13  # far from the purge horizon
    legacy = [_legacy_guard("r1", "a1", now, "removed"), _legacy_guard("r1", "a2", now + 1, "added"), _legacy_guard("r2", "a1", now + 2, "added")]
    sqlite_db[GUARDS].insert_many(legacy)
    # stopped half way last time: one copy already re-keyed
    done_before = {**legacy[0], "_id": f"r1 a1 {now}", "key": mirror.guard_id("r1", "a1")}
    sqlite_db[GUARDS].insert_one(done_before)

    writer = SubscriptionWriter.start(sqlite_db)

    stored = sorted((d["_id"], d["key"], d["version"]) for d in sqlite_db[GUARDS].find())
    assert stored == [(f"r1 a1 {now}", "r1 a1", now), (f"r1 a2 {now + 1}", "r1 a2", now + 1), (f"r2 a1 {now + 2}", "r2 a1", now + 2)]
    found = writer._read_guards([("r1", "a1"), ("r1", "a2")])
    assert {key: sorted(versions) for key, versions in found.items()} == {("r1", "a1"): [now], ("r1", "a2"): [now + 1]}
    assert sqlite_db[MIGRATIONS].find_one({"_id": GUARD_KEYS_MIGRATION}) == {"_id": GUARD_KEYS_MIGRATION, "rekeyed": 3}

    # done once: a guard that somehow still had a NUL key is not looked for again
    sqlite_db[GUARDS].insert_one(_legacy_guard("r3", "a3", now, "added"))
    SubscriptionWriter.start(sqlite_db)
    assert sqlite_db[GUARDS].count_documents({"roomId": "r3"}) == 1
    assert sqlite_db[MIGRATIONS].count_documents({}) == 1
