"""`chatfed rebuild` under live traffic: the swapped-in views equal the oracle and reads never break."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from elasticsearch import Elasticsearch

from chatfed_cli.rebuild import RebuildReport, rebuild_site
from dataflows.search_sync.queries import rooms_for, typeahead
from testkit.clients import es_client, es_settings, nats_settings
from testkit.search_oracle import Event, oracle
from testkit.search_site import SearchSite, close_site, open_site, publishable, random_history
from testkit.support import flow_env


def _rebuild_in_background(servers: dict[str, Any], site: str, method: str) -> asyncio.Task[RebuildReport]:
    """`chatfed rebuild` of `site` on a thread; `method`: replay, bulk, or bulk:K (K decoding worker processes)."""
    name, _, workers = method.partition(":")
    return asyncio.create_task(
        asyncio.to_thread(
            rebuild_site,
            site=site,
            nats_settings=nats_settings(servers, "s1"),
            elastic_settings=es_settings(servers),
            flow_env=flow_env(servers, site),
            timeout=300,
            method=name,
            parse_workers=int(workers) if workers else None,
        )
    )


@pytest.fixture
async def search_site(servers: dict[str, Any]) -> AsyncIterator[SearchSite]:
    site = await open_site(servers, es_client(servers))
    yield site
    await close_site(site)


def _normalised(docs: dict[str, Any]) -> dict[str, Any]:
    return {account: {**doc, "rooms": sorted(doc["rooms"])} for account, doc in docs.items()}


class Reader(threading.Thread):
    """Searches for users who have rooms, over and over, counting failures and empty answers."""

    def __init__(self, es: Elasticsearch, site: str, expected: dict[str, list[str]]) -> None:
        super().__init__(daemon=True)
        self.es, self.site, self.expected = es, site, expected
        self.stop = threading.Event()
        self.reads = 0
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for account, rooms in self.expected.items():
                try:
                    doc = rooms_for(self.es, f"user-room-{self.site}", account)
                    hits = typeahead(self.es, f"spotlight-{self.site}", account, "name of")
                except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                    self.problems.append(f"{account}: {exc!r}")
                    continue
                self.reads += 1
                if doc is None or sorted(doc.rooms) != rooms or not hits:
                    self.problems.append(f"{account}: rooms={None if doc is None else doc.rooms} hits={len(hits)}")


@pytest.mark.parametrize("method", ["replay", "bulk"])
async def test_rebuild_under_live_traffic_swaps_in_views_equal_to_the_oracle(search_site: SearchSite, servers: dict[str, Any], method: str) -> None:
    site = search_site.site
    history, order = random_history(3_000, accounts=40, rooms=30, seed=11)
    # live traffic touches other accounts, so the steady users' answers must never change
    traffic, traffic_order = random_history(1_500, accounts=20, rooms=10, seed=12, prefix="live-")
    traffic = [Event(e.account, e.room, e.ts + 1_000_000, e.added, e.hss + 1_000_000 if e.hss else 0) for e in traffic]
    shifted = {(e.account, e.room, e.ts - 1_000_000): e for e in traffic}
    traffic_order = [shifted[(e.account, e.room, e.ts)] for e in traffic_order]

    search_site.start_flow()
    await search_site.publish(publishable(site, order))
    await search_site.drain()
    steady_docs, _ = oracle(history)
    steady = {account: sorted(rooms) for account, doc in steady_docs.items() if (rooms := cast(list[str], doc["rooms"]))}
    assert steady, "the history gives some users rooms"

    search_site.es.indices.refresh(index=f"spotlight-{site}")  # searches are near-real-time; gets are not
    reader = Reader(es_client(servers), site, steady)
    reader.start()
    rebuild = _rebuild_in_background(servers, site, method)
    items = publishable(site, traffic_order)
    while not rebuild.done() or items:
        chunk, items = items[:50], items[50:]
        if chunk:
            await search_site.publish(chunk)
        await asyncio.sleep(0.05)
    report = await rebuild
    reader.stop.set()
    reader.join(10)

    await search_site.drain()
    user_rooms, spotlight = search_site.views()
    expected_rooms, expected_spotlight = oracle(history + traffic)
    assert _normalised(user_rooms) == _normalised(expected_rooms)
    assert set(spotlight) == set(expected_spotlight)
    assert reader.reads > 0
    assert reader.problems == []
    aliases = search_site.es.indices.get_alias(name=f"user-room-{site}")
    assert list(aliases) == [report.new_indexes[f"user-room-{site}"]]
    assert report.documents > 0 and report.events >= len(order)


def _fill_sensitive_settings(es: Elasticsearch, index: str) -> dict[str, Any]:
    flat = es.indices.get_settings(index=index, flat_settings=True)[index]["settings"]
    keys = ("index.refresh_interval", "index.number_of_replicas", "index.auto_expand_replicas", "index.number_of_shards")
    return {key: flat.get(key) for key in keys}



# bulk:1 decodes on a worker process (by default only streams of 100k+ messages do)
@pytest.mark.parametrize("method", ["bulk", "bulk:1", "replay"])
async def test_rebuild_with_traffic_on_the_same_documents_loses_nothing_and_restores_template_settings(
    search_site: SearchSite, servers: dict[str, Any], method: str
) -> None:
    """Live traffic on the very accounts and rooms being rebuilt (the post-swap tail matters); settings back to the template's."""
    site = search_site.site
    history, order = random_history(2_000, accounts=25, rooms=15, seed=21)
    later, _ = random_history(1_500, accounts=25, rooms=15, seed=22)
    later = [Event(e.account, e.room, e.ts + 1_000_000, e.added, e.hss + 1_000_000 if e.hss else 0, e.joined + 1_000_000 if e.joined else 0, e.name)
             for e in later]
    search_site.start_flow()
    await search_site.publish(publishable(site, order))
    await search_site.drain()
    rebuild = _rebuild_in_background(servers, site, method)
    items = publishable(site, later)
    while not rebuild.done() or items:
        chunk, items = items[:25], items[25:]
        if chunk:
            await search_site.publish(chunk)
        await asyncio.sleep(0.02)
    report = await rebuild
    await search_site.drain()
    user_rooms, spotlight = search_site.views()
    expected_rooms, expected_spotlight = oracle(history + later)
    assert _normalised(user_rooms) == _normalised(expected_rooms)
    assert set(spotlight) == set(expected_spotlight)
    assert {doc_id: {k: doc[k] for k in ("roomName", "joinedAt")} for doc_id, doc in spotlight.items()} == expected_spotlight

    es = search_site.es
    if method == "replay":
        return  # the replay path fills through the template's own settings
    for alias, index in report.new_indexes.items():
        probe = f"{alias}-vprobe"  # a fresh index shaped by the same template
        es.indices.create(index=probe)
        try:
            assert _fill_sensitive_settings(es, index) == _fill_sensitive_settings(es, probe), alias
        finally:
            es.indices.delete(index=probe)
    assert _fill_sensitive_settings(es, report.new_indexes[f"spotlight-{site}"])["index.refresh_interval"] == "250ms"
