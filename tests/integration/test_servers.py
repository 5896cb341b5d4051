"""The real servers answer: Elasticsearch, MongoDB (FerretDB) and the federated NATS JetStream domains."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from connectors.mongo import IN_CHUNK, INSERT_CHUNK, delete_in, ensure_indexes, find_in, insert_missing, pushes_in_down
from testkit.clients import connect_nats, es_client, mongo_client, nats_settings


def test_elasticsearch_index_search_delete(servers: dict[str, Any]) -> None:
    es = es_client(servers, request_timeout=30)
    index = f"chatfed-test-{uuid.uuid4().hex[:12]}"
    es.indices.create(index=index, mappings={"properties": {"name": {"type": "text"}}})
    try:
        es.index(index=index, id="r1", document={"name": "general chat"}, refresh=True)
        hits = es.search(index=index, query={"match": {"name": "general"}})["hits"]
        assert [h["_id"] for h in hits["hits"]] == ["r1"]
    finally:
        es.indices.delete(index=index)
    assert not es.indices.exists(index=index)


def test_mongo_unique_index_rejects_duplicate(servers: dict[str, Any]) -> None:
    client = mongo_client(servers, serverSelectionTimeoutMS=10_000)
    db_name = f"chatfed_test_{uuid.uuid4().hex[:12]}"
    try:
        subs = client[db_name]["subscriptions"]
        subs.create_index([("roomId", ASCENDING), ("u.account", ASCENDING)], unique=True)
        subs.insert_one({"_id": "a", "roomId": "r1", "u": {"account": "alice"}})
        with pytest.raises(DuplicateKeyError) as exc:
            subs.insert_one({"_id": "b", "roomId": "r1", "u": {"account": "alice"}})
        assert exc.value.code == 11000
        assert subs.count_documents({}) == 1
    finally:
        client.drop_database(db_name)
        client.close()


def test_in_lookups_read_every_chunk_and_on_postgresql_an_index(servers: dict[str, Any]) -> None:
    """`find_in`/`delete_in` (connectors/mongo.py) miss nothing across chunks; on FerretDB on PostgreSQL an `$in` and an
    equality are served by the GIN twin of the field's index (scripts/localservers/postgres.sql, the `$in` patch)."""
    client = mongo_client(servers, serverSelectionTimeoutMS=10_000)
    db = client[f"chatfed_test_{uuid.uuid4().hex[:12]}"]
    try:
        ensure_indexes(db)
        n = IN_CHUNK * 2 + 50
        db.users.insert_many([{"_id": f"u{i}", "account": f"a{i}"} for i in range(n)])
        on_postgresql = servers.get("mongo_backend") == "postgresql"
        assert pushes_in_down(db.users) == on_postgresql
        got = find_in(db.users, "account", [f"a{i}" for i in range(n)] + ["nobody"], projection={"_id": 1})
        assert sorted(d["_id"] for d in got) == sorted(f"u{i}" for i in range(n))
        if on_postgresql:
            for flt in ({"account": {"$in": ["a1", "a2"]}}, {"account": "a1"}, {"_id": {"$in": ["u1"]}}):
                plan = str(db.command("explain", {"find": "users", "filter": flt})["queryPlanner"])
                assert "Bitmap Index Scan" in plan and "_gin" in plan, (flt, plan)
        assert delete_in(db.users, "_id", [f"u{i}" for i in range(0, n, 2)]) == n - n // 2
        assert db.users.count_documents({}) == n // 2
        # inserted in chunks (side by side on PostgreSQL): exactly the documents that were there already are reported
        m = INSERT_CHUNK * 2 + 10
        existed = insert_missing(db.users, [{"_id": f"u{i}", "account": f"a{i}"} for i in range(m)])
        assert existed == {f"u{i}" for i in range(1, n, 2)}
        assert db.users.count_documents({}) == m
    finally:
        client.drop_database(db.name)
        client.close()


async def _operator(servers: dict[str, Any], site: str) -> Client:
    return await connect_nats(nats_settings(servers, site), connect_timeout=5, max_reconnect_attempts=0)


def test_each_site_has_jetstream_in_its_own_domain(servers: dict[str, Any]) -> None:
    async def domain_of(site: str) -> str | None:
        nc = await _operator(servers, site)
        try:
            return (await nc.jetstream().account_info()).domain
        finally:
            await nc.close()

    async def all_domains() -> dict[str, str | None]:
        return {site: await domain_of(site) for site in servers["sites"]}

    assert asyncio.run(all_domains()) == {site: site for site in servers["sites"]}


def test_a_domain_is_managed_from_its_own_site_only(servers: dict[str, Any]) -> None:
    """A site's operator manages its streams, also through $JS.{domain}.API; the next site cannot reach that API."""
    sites = list(servers["sites"])
    pairs = [(sites[i], sites[(i + 1) % len(sites)]) for i in range(len(sites))] if len(sites) > 1 else []

    async def check(home: str, other: str) -> int:
        stream, subject = f"TEST_{uuid.uuid4().hex[:10]}", f"test.{uuid.uuid4().hex[:10]}"
        nc_home = await _operator(servers, home)
        nc_other = await _operator(servers, other)
        try:
            js_home = nc_home.jetstream(domain=home)
            await js_home.add_stream(name=stream, subjects=[subject])
            try:
                ack = await js_home.publish(subject, b"hello")
                assert ack.domain == home
                js_from_other = nc_other.jetstream(domain=home, timeout=2)
                with pytest.raises((NoRespondersError, NatsTimeoutError, ServiceUnavailableError)):
                    await js_from_other.stream_info(stream)
                with pytest.raises((NoRespondersError, NatsTimeoutError, ServiceUnavailableError)):
                    await js_from_other.delete_stream(stream)
                return (await js_home.stream_info(stream)).state.messages
            finally:
                await js_home.delete_stream(stream)
        finally:
            await nc_home.close()
            await nc_other.close()

    for home, other in pairs:
        assert asyncio.run(check(home, other)) == 1, f"{home} from {other}"
