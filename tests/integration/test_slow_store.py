"""Work in progress keeps its messages: a store slower than the ack wait causes no redelivery (issue 10, item 2)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from nats.js.api import ConsumerConfig
from pymongo import uri_parser

from connectors.settings import Tuning
from schemas import names
from testkit.clients import es_client
from testkit.room_harness import RoomHarness, run, user
from testkit.search_site import close_site, open_site, publishable, random_history
from testkit.support import retune
from tests.integration.slow_proxy import SlowProxy

TS = 1767225600000
ACK_WAIT_S = 2
ADDS = 15


def test_a_store_slower_than_the_ack_wait_causes_no_redelivery(servers: dict[str, Any]) -> None:
    [(host, port)] = uri_parser.parse_uri(servers["mongo_uri"])["nodelist"]  # FerretDB: (socket path, None)
    unix = host if host.endswith(".sock") else ""
    accounts = [f"m{i:02d}" for i in range(ADDS)]

    async def scenario(h: RoomHarness, proxy: SlowProxy) -> None:
        js = h.client.jetstream()
        info = await js.consumer_info(names.rooms_stream(h.site), names.ROOM_WORKER_DURABLE)
        config: ConsumerConfig = info.config
        config.ack_wait = ACK_WAIT_S
        await js.add_consumer(names.rooms_stream(h.site), config)
        updated = await js.consumer_info(names.rooms_stream(h.site), names.ROOM_WORKER_DURABLE)
        assert updated.config.ack_wait == ACK_WAIT_S
        h.start_flow(
            CHATFED_MONGO_URI=f"mongodb://127.0.0.1:{proxy.port}/",
            CHATFED_ACK_WAIT_S=str(ACK_WAIT_S),
        )
        created = await h.call("create", {"name": "slow", "users": [], "roomId": "r-slow", "requesterAccount": "alice", "timestamp": TS}, requester="alice")
        assert created["status"] == "ok"
        for i, account in enumerate(accounts):  # one backlog: each command pays many slow round trips, in room order
            body = {"roomId": "r-slow", "users": [account], "history": {"mode": "all"}, "requesterAccount": "alice", "timestamp": TS + 1 + i}
            await h.send("member.add", body)
        await h.drained()
        info = await js.consumer_info(names.rooms_stream(h.site), names.ROOM_WORKER_DURABLE)
        # the consumer sequence counts every delivery, redeliveries included
        assert info.delivered.stream_seq == ADDS + 1
        assert info.delivered.consumer_seq == ADDS + 1, f"{info.delivered.consumer_seq - ADDS - 1} redeliveries while in progress"
        assert sorted(h.subs("r-slow")) == sorted(["alice", *accounts])
        assert len(await h.local_events()) == ADDS + 1

    async def go() -> None:
        harness = RoomHarness(servers)
        with SlowProxy(host, port or 27017, delay_s=0.05, upstream_unix=unix) as proxy:
            try:
                await harness.start([user("alice", harness.site), *(user(a, harness.site) for a in accounts)], flow=False)
                await scenario(harness, proxy)
            finally:
                await harness.close()

    run(go())


def test_an_elasticsearch_slower_than_the_ack_wait_causes_no_redelivery(servers: dict[str, Any]) -> None:
    """search_sync's bulk writes through a proxy that holds every request: its messages get +WPI, not redelivered."""
    url = urlsplit(servers["es_url"])

    async def go() -> None:
        site = await open_site(servers, es_client(servers))
        try:
            js = site.nc.jetstream()
            await retune(js, names.inbox_stream(site.site), names.SEARCH_SYNC_DURABLE, Tuning(ack_wait_s=ACK_WAIT_S))
            _, order = random_history(400, accounts=40, rooms=10, seed=7, prefix="slow")
            await site.publish(publishable(site.site, order))
            with SlowProxy(url.hostname or "127.0.0.1", url.port or 9200, delay_s=0.4) as proxy:
                site.start_flow(CHATFED_ES_URL=f"{url.scheme}://127.0.0.1:{proxy.port}", CHATFED_ACK_WAIT_S=str(ACK_WAIT_S))
                await site.drain(timeout=300)
            info = await js.consumer_info(names.inbox_stream(site.site), names.SEARCH_SYNC_DURABLE)
            assert info.delivered.consumer_seq == info.delivered.stream_seq == len(order), (
                f"{info.delivered.consumer_seq - len(order)} redeliveries while in progress"
            )
        finally:
            await close_site(site)

    run(go())
