"""The pull source and the settle sink against a real nats-server: delivery, ack, delayed nak, dead letter."""

from __future__ import annotations

import time
from typing import Any

from connectors import dlq
from connectors.jetstream import JetStreamSource, SettleSink
from connectors.settings import NatsSettings, Tuning
from schemas import carriers, names, subjects
from schemas.carriers import Delivery, done, poison, retry
from schemas.origin import sourced_from
from testkit.clients import nats_settings
from testkit.support import bootstrap_local_sites, connect_site, unique_site, wait_drained, wait_for


def _operator(servers: dict[str, Any]) -> NatsSettings:
    return nats_settings(servers, "s1")


def _poll(partition: Any, count: int, timeout: float = 20) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = partition.next_batch()
        got.extend(batch)
        if not batch:
            time.sleep(0.005)  # poll interval: waits for `count` deliveries or the deadline
    return got


async def test_pull_ack_retry_and_dead_letter(servers: dict[str, Any]) -> None:
    site = unique_site()
    client = await connect_site(servers, "s1")
    try:
        await bootstrap_local_sites(client, [site])
        js = client.jetstream()
        count = 2_000
        for index in range(count):
            await js.publish(subjects.inbox_local(site, "member_added"), f"m{index}".encode(), headers={"Nats-Msg-Id": f"id-{index}"})

        nats_settings = _operator(servers)
        tuning = Tuning(pull_batch=100, max_deliver=3, backoff_base_ms=200, backoff_max_ms=200)
        partition = JetStreamSource(nats_settings, tuning, stream=names.inbox_stream(site), durable=names.SEARCH_SYNC_DURABLE).build("pull", 0, 1)
        sink = SettleSink(nats_settings, tuning, flow="test", dlq_subject=subjects.dlq(site, "test")).build("settle", 0, 1)

        first = _poll(partition, count)
        assert sorted(d.stream_seq for d in first) == list(range(1, count + 1))
        assert all(d.num_delivered == 1 and d.stream == names.inbox_stream(site) for d in first)
        assert first[0].headers is not None and first[0].headers["Nats-Msg-Id"].startswith("id-")
        verdicts = [poison(d, "bad\nbytes") if d.stream_seq == 1 else retry(d, "store down") if d.stream_seq == 2 else done(d) for d in first]
        sink.write_batch(verdicts)

        # the retried message comes back after its delay, counted; on its last delivery it is dead-lettered
        for attempt in (2, 3):
            again = _poll(partition, 1, timeout=10)
            assert [(d.stream_seq, d.num_delivered) for d in again] == [(2, attempt)]
            sink.write_batch([retry(again[0], "store down")])
        partition.close()

        await wait_drained(js, names.inbox_stream(site), names.SEARCH_SYNC_DURABLE, timeout=10)
        dlq = names.dlq_stream(site)
        assert (await js.stream_info(dlq)).state.messages == 2
        reasons = {}
        for seq in (1, 2):
            msg = await js.get_msg(dlq, seq)
            headers = msg.headers or {}
            reasons[int(headers[carriers.DLQ_SEQUENCE])] = headers
        assert reasons[1][carriers.DLQ_REASON] == "bad bytes"
        assert reasons[2][carriers.DLQ_REASON] == "store down"
        assert reasons[2][carriers.DLQ_DELIVERIES] == "3"
        assert reasons[1][carriers.DLQ_SUBJECT] == subjects.inbox_local(site, "member_added")
        assert reasons[1][carriers.DLQ_STREAM] == names.inbox_stream(site)
        assert reasons[1][carriers.DLQ_ORIGINAL_MSG_ID] == "id-0"
    finally:
        await client.close()


async def test_aggregate_lane_dead_letter_keeps_its_origin_and_replays(servers: dict[str, Any]) -> None:
    site, origin = unique_site(), unique_site()
    client = await connect_site(servers, "s1")
    try:
        await bootstrap_local_sites(client, [site, origin])
        js = client.jetstream()
        await js.publish(subjects.outbox(origin=origin, dest=site, event_type="member_added"), b"not json", headers={"Nats-Msg-Id": "x:1"})
        nats_settings = _operator(servers)
        tuning = Tuning(pull_batch=10)
        partition = JetStreamSource(nats_settings, tuning, stream=names.inbox_stream(site), durable=names.INBOX_WORKER_DURABLE).build("pull", 0, 1)
        sink = SettleSink(nats_settings, tuning, flow="test", dlq_subject=subjects.dlq(site, "test")).build("settle", 0, 1)
        [sourced] = _poll(partition, 1)
        assert sourced_from(sourced.headers) == origin
        sink.write_batch([poison(sourced, "undecodable")])  # the server refuses a copied Nats-Stream-Source header
        await wait_drained(js, names.inbox_stream(site), names.INBOX_WORKER_DURABLE, timeout=10)

        [letter] = await dlq.list_dead_letters(client, site)
        assert letter.reason == "undecodable"
        assert sourced_from({carriers.REPLAYED_STREAM_SOURCE: letter.headers[carriers.DLQ_STREAM_SOURCE]}) == origin
        assert await dlq.replay(client, site, [letter]) == 1
        [replayed] = _poll(partition, 1)
        partition.close()
        assert replayed.subject == subjects.inbox_aggregate(site, "member_added")
        assert replayed.data == b"not json"
        assert sourced_from(replayed.headers) == origin  # the origin check still passes after a replay
        assert await wait_for(lambda: _dlq_empty(client, site), timeout=5, what="replayed letter removed from the DLQ")
    finally:
        await client.close()


async def _dlq_empty(client: Any, site: str) -> bool:
    return (await client.jetstream().stream_info(names.dlq_stream(site))).state.messages == 0


def test_a_refused_pull_stops_the_flow_loudly(servers: dict[str, Any]) -> None:
    """s1's service user may not pull from another site's streams: that is a configuration fault, not a wait."""
    import pytest

    from connectors.natsio import NotPermitted

    service = nats_settings(servers, "s1", role="service")
    partition = JetStreamSource(service, Tuning(), stream="INBOX_elsewhere", durable=names.SEARCH_SYNC_DURABLE).build("pull", 0, 1)
    try:
        deadline = time.monotonic() + 10
        with pytest.raises(NotPermitted, match="permissions violation"):
            while time.monotonic() < deadline:
                partition.next_batch()
                time.sleep(0.05)  # poll interval: until the refusal surfaces or the deadline
    finally:
        partition.close()
