"""Store-and-forward between the real s1 and s2 servers: two JetStream domains joined over leafnodes.

The test that stops s2 does it on NATS servers of this module's own (own_servers), never the shared ones.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from schemas import names, subjects
from testkit.private_servers import PrivateServers
from testkit.support import bootstrap_federated, connect_site, wait_for

OWN_SERVERS = ("nats",)  # the outage stops nats-s2; the stores are not used


async def _aggregate_messages(js: JetStreamContext, dest: str, marker: str, expect: int, timeout: float = 30) -> list[Any]:
    """Messages on `INBOX_{dest}`'s aggregate lane whose body holds `marker`, once `expect` of them arrived."""
    found: list[Any] = []

    async def collect() -> bool:
        found.clear()
        sub = await js.subscribe(
            subjects.inbox_aggregate_filter(dest),
            stream=names.inbox_stream(dest),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except TimeoutError:
                    break
                if marker.encode() in msg.data:
                    found.append(msg)
        finally:
            await sub.unsubscribe()
        return len(found) >= expect

    await wait_for(collect, timeout=timeout, interval=0.5, what=f"{expect} aggregate message(s) marked {marker}")
    return list(found)


async def test_outbox_event_arrives_once_on_the_destination_aggregate_lane(federated_sites: dict[str, Any]) -> None:
    s1 = await connect_site(federated_sites, "s1")
    s2 = await connect_site(federated_sites, "s2")
    try:
        js1, js2 = s1.jetstream(), s2.jetstream()
        marker = uuid.uuid4().hex
        msg_id = f"{marker}:s2"
        body = f'{{"marker":"{marker}"}}'.encode()
        first = await js1.publish(subjects.outbox(origin="s1", dest="s2", event_type="member_added"), body, headers={"Nats-Msg-Id": msg_id})
        again = await js1.publish(subjects.outbox(origin="s1", dest="s2", event_type="member_added"), body, headers={"Nats-Msg-Id": msg_id})
        elsewhere = f'{{"marker":"{marker}","to":"s3"}}'.encode()
        await js1.publish(subjects.outbox(origin="s1", dest="s3", event_type="member_added"), elsewhere, headers={"Nats-Msg-Id": f"{marker}:s3"})
        assert not first.duplicate
        assert again.duplicate
        # the barrier: sourcing keeps OUTBOX_s1's order, so a duplicate or s3 copy wrongly forwarded arrives before it
        barrier = f'{{"marker":"{marker}","barrier":true}}'.encode()
        await js1.publish(subjects.outbox(origin="s1", dest="s2", event_type="member_added"), barrier, headers={"Nats-Msg-Id": f"{marker}-b:s2"})

        *arrived, last = await _aggregate_messages(js2, "s2", marker, expect=2)
        assert last.data == barrier
        assert len(arrived) == 1
        assert arrived[0].subject == "chat.inbox.s2.aggregate.member_added"
        assert arrived[0].headers["Nats-Msg-Id"] == msg_id
        assert arrived[0].data == body
        assert "OUTBOX_s1" in arrived[0].headers.get("Nats-Stream-Source", "")
    finally:
        await s1.close()
        await s2.close()


@pytest.mark.slow
async def test_events_published_while_destination_is_down_all_arrive(own_servers: PrivateServers) -> None:
    federated_sites = own_servers.info
    await bootstrap_federated(federated_sites)
    count = 1_000
    marker = uuid.uuid4().hex
    await asyncio.to_thread(own_servers.stop, "nats-s2")
    try:
        s1 = await connect_site(federated_sites, "s1")
        try:
            js1 = s1.jetstream()
            subject = subjects.outbox(origin="s1", dest="s2", event_type="member_added")
            for index in range(count):
                await js1.publish(subject, f'{{"marker":"{marker}","n":{index}}}'.encode(), headers={"Nats-Msg-Id": f"{marker}-{index}:s2"})
        finally:
            await s1.close()
    finally:
        await asyncio.to_thread(own_servers.start_again, "nats-s2")
    s2 = await connect_site(federated_sites, "s2")
    try:
        arrived = await _aggregate_messages(s2.jetstream(), "s2", marker, expect=count, timeout=90)
        numbers = sorted(int(msg.data.split(b'"n":')[1].rstrip(b"}")) for msg in arrived)
        assert numbers == list(range(count))
    finally:
        await s2.close()


@pytest.mark.slow
async def test_sourcing_through_the_origins_durable_survives_restarts_of_either_server(own_servers: PrivateServers) -> None:
    """INBOX_s2 binds to the durable s1 keeps for it on OUTBOX_s1: it resumes after the origin's restart (the durable is
    kept on disk) and after the destination's (the source resets the durable to where it left), each event once."""
    federated_sites = own_servers.info
    await bootstrap_federated(federated_sites)
    marker = uuid.uuid4().hex
    subject = subjects.outbox(origin="s1", dest="s2", event_type="member_added")
    sent = 0

    async def publish(count: int) -> None:
        nonlocal sent
        s1 = await connect_site(federated_sites, "s1")
        try:
            js1 = s1.jetstream()
            for _ in range(count):
                await js1.publish(subject, f'{{"marker":"{marker}","n":{sent}}}'.encode(), headers={"Nats-Msg-Id": f"{marker}-{sent}:s2"})
                sent += 1
        finally:
            await s1.close()

    async def all_arrived_once() -> None:
        s2 = await connect_site(federated_sites, "s2")
        try:
            arrived = await _aggregate_messages(s2.jetstream(), "s2", marker, expect=sent, timeout=90)
            assert sorted(int(msg.data.split(b'"n":')[1].rstrip(b"}")) for msg in arrived) == list(range(sent))
        finally:
            await s2.close()

    await publish(50)
    await all_arrived_once()
    for server in ("nats-s1", "nats-s2"):
        await asyncio.to_thread(own_servers.stop, server)
        await asyncio.to_thread(own_servers.start_again, server)
        await publish(50)
        await all_arrived_once()
    s1 = await connect_site(federated_sites, "s1")
    try:
        durable = await s1.jetstream().consumer_info(names.outbox_stream("s1"), names.outbox_source_durable("s2"))
        assert durable.config.filter_subject == subjects.outbox_to_filter(origin="s1", dest="s2")
        assert durable.config.ack_policy == "flow_control"
    finally:
        await s1.close()
