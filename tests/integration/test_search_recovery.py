"""search_sync under crashes, an Elasticsearch outage and a 2-process cluster: the views still equal the oracle.

The outages stop servers of this module's own (own_servers), never the shared ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from schemas import names
from testkit.clients import es_client
from testkit.private_servers import PrivateServers
from testkit.search_oracle import oracle
from testkit.search_site import (
    SearchSite,
    close_site,
    open_site,
    publishable,
    random_history,
)
from testkit.support import wait_for

NATS_OUTAGE_S = 3.0
OWN_SERVERS = ("nats", "es")  # the outages stop these; search_sync uses no MongoDB


@pytest.fixture
async def search_site(servers: dict[str, Any]) -> AsyncIterator[SearchSite]:
    site = await open_site(servers, es_client(servers))
    yield site
    await close_site(site)


@pytest.fixture
async def own_search_site(own_servers: PrivateServers) -> AsyncIterator[SearchSite]:
    """A search site on this module's own servers, for the tests that stop them."""
    site = await open_site(own_servers.info, es_client(own_servers.info))
    yield site
    await close_site(site)


@pytest.fixture
async def second_site(servers: dict[str, Any]) -> AsyncIterator[SearchSite]:
    site = await open_site(servers, es_client(servers))
    yield site
    await close_site(site)


async def _acked(site: SearchSite) -> int:
    info = await site.nc.jetstream().consumer_info(names.inbox_stream(site.site), names.SEARCH_SYNC_DURABLE)
    return int(info.ack_floor.stream_seq or 0)


async def _dead_letters(site: SearchSite) -> int:
    info = await site.nc.jetstream().stream_info(names.dlq_stream(site.site))
    return int(info.state.messages)


@pytest.mark.slow
async def test_kill_9_mid_run_then_restart_equals_the_oracle(search_site: SearchSite) -> None:
    events, order = random_history(19_000, accounts=100, rooms=60, seed=9)  # + 5 % duplicates ≈ 20,000 messages
    await search_site.publish(publishable(search_site.site, order))
    # at most 2,000 handed over at once, so the ack floor climbs in steps and the kill lands mid-run
    flow = search_site.start_flow(CHATFED_MAX_BUFFERED="2000")
    await wait_for(lambda: _acked_between(search_site, 3_000), timeout=120, interval=0.05, what="some progress")
    flow.kill()  # kill -9: un-acked work and coalescing buffers are lost
    assert await _acked(search_site) < len(order), "the kill must land mid-run"
    search_site.start_flow()
    await search_site.drain(timeout=240)
    assert search_site.views() == oracle(events)
    assert await _dead_letters(search_site) == 0


async def _acked_between(site: SearchSite, low: int) -> bool:
    return await _acked(site) >= low


@pytest.mark.slow
async def test_two_processes_give_the_same_indexes_as_one(search_site: SearchSite, second_site: SearchSite) -> None:
    events, order = random_history(9_500, accounts=80, rooms=40, seed=2)  # ≈ 10,000 messages
    await search_site.publish(publishable(search_site.site, order))
    await second_site.publish(publishable(second_site.site, order))
    search_site.start_flow(processes=2)
    second_site.start_flow(processes=1)
    await search_site.drain(timeout=240)
    await second_site.drain(timeout=240)
    two = {index: search_site.documents(getattr(search_site.indexes, index)) for index in ("user_room", "spotlight")}
    one = {index: second_site.documents(getattr(second_site.indexes, index)) for index in ("user_room", "spotlight")}
    assert two == one
    assert search_site.views() == oracle(events)


@pytest.mark.slow
async def test_elasticsearch_down_30s_loses_nothing_and_dead_letters_nothing(own_servers: PrivateServers, own_search_site: SearchSite) -> None:
    search_site = own_search_site
    events, order = random_history(6_000, accounts=60, rooms=40, seed=30)
    search_site.start_flow()
    await search_site.publish(publishable(search_site.site, order[:2_000]))
    await wait_for(lambda: _acked_between(search_site, 1_000), timeout=120, interval=0.05, what="some progress")
    try:
        await asyncio.to_thread(own_servers.stop, "es")
        await wait_for(lambda: not _es_answers(search_site.es), timeout=60, what="Elasticsearch to stop")
        await search_site.publish(publishable(search_site.site, order[2_000:]))  # arrives during the outage
        await asyncio.sleep(30)  # the outage's length is the point: the flow keeps retrying without dead-lettering
    finally:
        await asyncio.to_thread(own_servers.start_again, "es")  # always bring it back, whatever happened above
    await search_site.drain(timeout=300)
    assert await _dead_letters(search_site) == 0
    assert search_site.views() == oracle(events)
    for flow in search_site.flows:
        flow.assert_alive()


def _nats_outage(own_servers: PrivateServers) -> None:
    with own_servers.outage("nats-s1", NATS_OUTAGE_S):
        pass


def _es_answers(es: Elasticsearch) -> bool:
    try:
        es.cluster.health()
    except Exception:  # noqa: BLE001 - any failure means "not answering", which is what we wait for
        return False
    return True


@pytest.mark.slow
async def test_nats_restart_under_search_sync_loses_nothing(own_servers: PrivateServers, own_search_site: SearchSite) -> None:
    search_site = own_search_site
    events, order = random_history(6_000, accounts=60, rooms=40, seed=31)
    flow = search_site.start_flow()
    await search_site.publish(publishable(search_site.site, order[:3_000]))
    await wait_for(lambda: _acked_between(search_site, 500), timeout=120, interval=0.05, what="some progress")
    await asyncio.to_thread(_nats_outage, own_servers)  # the flow's connection drops with the server and must come back on its own

    async def jetstream_answers() -> bool:
        try:
            await search_site.nc.jetstream().stream_info(names.inbox_stream(search_site.site))
        except Exception:  # noqa: BLE001 - any failure means "not back yet", which is what we wait for
            return False
        return True

    await wait_for(jetstream_answers, timeout=60, interval=0.2, what="JetStream after the restart")
    await search_site.publish(publishable(search_site.site, order[3_000:]))
    await search_site.drain(timeout=300)
    flow.assert_alive()  # never restarted: the same process caught up
    assert await _dead_letters(search_site) == 0
    assert search_site.views() == oracle(events)
