"""Integration helpers for search_sync: a test site with its streams and indexes, publishing, reading the views back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from elasticsearch import Elasticsearch, NotFoundError
from nats.aio.client import Client

from connectors.bootstrap import bootstrap_site, ensure_source_consumers, ensure_stream
from dataflows.search_sync.indexes import SearchIndexes
from schemas import names, subjects
from schemas.streams import site_streams
from testkit.search_oracle import Event, event_bytes
from testkit.support import (
    FlowProcess,
    bootstrap_local_sites,
    connect_site,
    flow_env,
    unique_site,
    wait_drained,
    wait_for,
)

FLOW_MODULE = names.flow_module(names.SEARCH_SYNC_FLOW)
# The test events claim to come from site s1 (testkit.search_oracle), so a test site sources the real
# OUTBOX_s1 of the s1 server for its aggregate lane: the origin check then sees a genuine s1 source.
HOME = "s1"


@dataclass
class SearchSite:
    """One isolated test site: streams on s1, its own indexes, and the flow processes started for it."""

    servers: Mapping[str, Any]
    site: str
    nc: Client
    es: Elasticsearch
    flows: list[FlowProcess] = field(default_factory=list)
    others: list[str] = field(default_factory=list)

    @property
    def indexes(self) -> SearchIndexes:
        return SearchIndexes(user_room=names.user_room_alias(self.site), spotlight=names.spotlight_alias(self.site), room_names=names.room_names_alias(self.site))

    def start_flow(self, *, processes: int = 1, **env: str) -> FlowProcess:
        flow = FlowProcess(FLOW_MODULE, flow_env(self.servers, self.site, **env), processes=processes).start()
        self.flows.append(flow)
        return flow

    async def publish(self, items: Sequence[tuple[str, bytes]], chunk: int = 500) -> None:
        """Publish (subject, data) pairs to JetStream, `chunk` in flight at a time; return once all are in the INBOX.

        Items sent to `OUTBOX_s1` reach the INBOX by sourcing, a moment later: a drain must not start before.
        """
        js = self.nc.jetstream()
        inbox = names.inbox_stream(self.site)
        before = (await js.stream_info(inbox)).state.last_seq
        for start in range(0, len(items), chunk):
            await asyncio.gather(*(js.publish(subject, data) for subject, data in items[start : start + chunk]))

        async def arrived() -> bool:
            return (await js.stream_info(inbox)).state.last_seq >= before + len(items)

        await wait_for(arrived, timeout=120, what=f"{len(items)} messages in {inbox}")

    async def drain(self, timeout: float = 120) -> None:
        await wait_drained(self.nc.jetstream(), names.inbox_stream(self.site), names.SEARCH_SYNC_DURABLE, timeout=timeout)

    def documents(self, index: str) -> dict[str, dict[str, Any]]:
        return documents(self.es, index)

    def views(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        return read_views(self.es, self.indexes)


def documents(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    """Every document of `index` by id (refreshed first)."""
    es.indices.refresh(index=index)
    docs: dict[str, dict[str, Any]] = {}
    after: list[Any] | None = None
    while True:
        page = es.search(index=index, size=5000, sort=[{"_doc": "asc"}], search_after=after, query={"match_all": {}})["hits"]["hits"]
        if not page:
            return docs
        docs.update({hit["_id"]: hit["_source"] for hit in page})
        after = page[-1]["sort"]


def read_views(es: Elasticsearch, indexes: SearchIndexes) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """user-room docs reduced to the oracle's fields, and spotlight ids -> {roomName, joinedAt}."""
    user_rooms = {
        account: {"rooms": doc["rooms"], "restrictedRooms": doc["restrictedRooms"], "roomTimestamps": doc["roomTimestamps"]}
        for account, doc in documents(es, indexes.user_room).items()
    }
    spotlight = {doc_id: {"roomName": doc["roomName"], "joinedAt": doc["joinedAt"]} for doc_id, doc in documents(es, indexes.spotlight).items()}
    return user_rooms, spotlight


def member_subject(site: str, event: Event, lane: int) -> str:
    """Even lanes: the local lane; odd lanes: through `OUTBOX_s1`, which the test site sources (the events claim s1)."""
    event_type = "member_added" if event.added else "member_removed"
    return subjects.outbox(origin=HOME, dest=site, event_type=event_type) if lane % 2 else subjects.inbox_local(site, event_type)


def random_history(count: int, accounts: int, rooms: int, seed: int, prefix: str = "") -> tuple[list[Event], list[Event]]:
    """`count` events with distinct timestamps, and a delivery order with ~5 % duplicates, shuffled."""
    rng = random.Random(seed)
    stamps = rng.sample(range(1_000, 1_000 + count * 10), count)
    events = []
    for ts in stamps:
        add = rng.random() < 0.6
        restricted = add and rng.random() < 0.2
        account, room = f"{prefix}u{rng.randrange(accounts)}", f"{prefix}r{rng.randrange(rooms)}"
        if add:  # adds of one membership disagree on joinedAt and name: the oldest shapes it, the newest names it
            events.append(Event(account, room, ts, add, ts - 1 if restricted else 0, ts - rng.randrange(1, 9), rng.choice(["", "sixteen", "sixteen-b"])))
        else:
            events.append(Event(account, room, ts, add))
    order = events + rng.sample(events, count // 20)
    rng.shuffle(order)
    return events, order


def publishable(site: str, order: Sequence[Event]) -> list[tuple[str, bytes]]:
    return [(member_subject(site, event, index), event_bytes(event)) for index, event in enumerate(order)]


def cleanup_indexes(es: Elasticsearch, site: str) -> None:
    es.indices.delete(index=f"*-{site}*", ignore_unavailable=True, allow_no_indices=True, expand_wildcards="all")
    try:
        found = es.indices.get_index_template(name=f"chatfed-*-{site}")["index_templates"]
    except NotFoundError:
        return
    for template in found:
        es.indices.delete_index_template(name=template["name"])


async def open_site(servers: Mapping[str, Any], es: Elasticsearch) -> SearchSite:
    """A fresh test site: its streams and consumers on s1, its aggregate lane sourcing `OUTBOX_s1`; no indexes yet."""
    site, other = unique_site(), unique_site()
    nc = await connect_site(servers, "s1")
    # the real OUTBOX_s1, as s1's bootstrap makes it (idempotent): a fresh server may not have it yet
    await ensure_stream(nc.jetstream(), next(spec for spec in site_streams(HOME, [HOME]) if spec.name == names.outbox_stream(HOME)))
    await bootstrap_local_sites(nc, [other])
    for origin in (HOME, other):  # the durables the test site's INBOX sources through, on OUTBOX_s1 and OUTBOX_{other}
        await ensure_source_consumers(nc.jetstream(), origin, [site])
    await bootstrap_site(nc, site, [site, other, HOME], federated=False)
    test_site = SearchSite(servers=servers, site=site, nc=nc, es=es)
    test_site.others.append(other)
    return test_site


async def close_site(test_site: SearchSite) -> None:
    """Stop its flows, delete its indexes, templates and streams."""
    for flow in test_site.flows:
        flow.stop()
    cleanup_indexes(test_site.es, test_site.site)
    js = test_site.nc.jetstream()
    try:  # the durable the real OUTBOX_s1 kept for it
        await js.delete_consumer(names.outbox_stream(HOME), names.outbox_source_durable(test_site.site))
    except nats.js.errors.NotFoundError:
        pass
    for site in [test_site.site, *test_site.others]:
        for spec in site_streams(site, [test_site.site, *test_site.others]):
            try:
                await js.delete_stream(spec.name)
            except nats.js.errors.NotFoundError:
                pass  # already gone: nothing to clean
    await test_site.nc.close()
