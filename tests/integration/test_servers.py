"""The real servers answer: Elasticsearch, MongoDB (FerretDB) and the federated NATS JetStream domains."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from elasticsearch import Elasticsearch
from pymongo import ASCENDING, MongoClient
from pymongo.errors import DuplicateKeyError


def test_elasticsearch_index_search_delete(es_url: str) -> None:
    es = Elasticsearch(es_url, request_timeout=30)
    index = f"chatfed-test-{uuid.uuid4().hex[:12]}"
    es.indices.create(index=index, mappings={"properties": {"name": {"type": "text"}}})
    try:
        es.index(index=index, id="r1", document={"name": "general chat"}, refresh=True)
        hits = es.search(index=index, query={"match": {"name": "general"}})["hits"]
        assert [h["_id"] for h in hits["hits"]] == ["r1"]
    finally:
        es.indices.delete(index=index)
    assert not es.indices.exists(index=index)


def test_mongo_unique_index_rejects_duplicate(mongo_uri: str) -> None:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
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


def test_each_site_has_jetstream_in_its_own_domain(site_urls: dict[str, str]) -> None:
    async def domain_of(url: str) -> str | None:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            return (await nc.jetstream().account_info()).domain
        finally:
            await nc.close()

    async def all_domains() -> dict[str, str | None]:
        return {site: await domain_of(url) for site, url in site_urls.items()}

    assert asyncio.run(all_domains()) == {site: site for site in site_urls}


def test_stream_in_one_domain_is_reachable_from_another(site_urls: dict[str, str]) -> None:
    """Each site manages and reads a stream of the next site through $JS.{domain}.API over the leafnodes."""
    sites = list(site_urls)
    pairs = [(sites[i], sites[(i + 1) % len(sites)]) for i in range(len(sites))] if len(sites) > 1 else []

    async def check(local: str, remote: str) -> int:
        stream, subject = f"TEST_{uuid.uuid4().hex[:10]}", f"test.{uuid.uuid4().hex[:10]}"
        nc_local = await nats.connect(site_urls[local], connect_timeout=5, max_reconnect_attempts=0)
        nc_remote = await nats.connect(site_urls[remote], connect_timeout=5, max_reconnect_attempts=0)
        try:
            js_via_leaf = nc_local.jetstream(domain=remote)
            await js_via_leaf.add_stream(name=stream, subjects=[subject])
            try:
                ack = await nc_remote.jetstream().publish(subject, b"hello")
                assert ack.domain == remote
                return (await js_via_leaf.stream_info(stream)).state.messages
            finally:
                await js_via_leaf.delete_stream(stream)
        finally:
            await nc_local.close()
            await nc_remote.close()

    for local, remote in pairs:
        assert asyncio.run(check(local, remote)) == 1, f"{local} -> {remote}"
