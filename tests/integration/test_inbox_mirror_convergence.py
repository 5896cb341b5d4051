"""inbox_mirror converges to the timestamp-order oracle: random histories, kill -9 mid-stream, 1 vs 2 processes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import names
from testkit.mirror_site import (
    ACCOUNTS,
    Item,
    MirrorSite,
    history,
    mirror_site,
    oracle,
    redelivered,
)
from testkit.support import wait_for


def snapshot(s: MirrorSite) -> list[dict[str, Any]]:
    """The subscriptions without their ids and their home site (each MirrorSite has its own peer as origin)."""
    assert {d["siteId"] for d in s.subs()} <= {s.other}
    docs = [{k: v for k, v in d.items() if k not in ("_id", "siteId")} for d in s.subs()]
    return sorted(docs, key=lambda d: (d["roomId"], d["u"]["account"]))


@pytest.fixture(scope="module")
def running(servers: dict[str, Any]) -> Iterator[MirrorSite]:
    with mirror_site(servers) as s:
        s.users(ACCOUNTS)
        with s.flow(CHATFED_FLUSH_MS="20") as flow:
            yield s
            flow.assert_alive()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), events=st.integers(1, 25), chunks=st.integers(1, 6))
def test_random_histories_converge_to_the_timestamp_order_oracle(running: MirrorSite, seed: int, events: int, chunks: int) -> None:
    rnd = random.Random(seed)
    tag = f"h{seed}-{events}-{chunks}-{rnd.getrandbits(32)}"
    rooms = [f"{tag}-r{i}" for i in range(2)]
    items = history(rnd, rooms, events)
    arrivals = redelivered(rnd, items)
    # drained between chunks, so changes of one member meet across batches too, not only inside one
    cuts = sorted(rnd.sample(range(1, len(arrivals)), k=min(chunks - 1, len(arrivals) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(arrivals)], strict=True):
        running.publish(arrivals[start:end])
        running.drained()
    got = {(room, account) for room, account in running.present() if room.startswith(tag)}
    assert got == oracle(items)


def _publish_history(s: MirrorSite, seed: int, rooms: int, events: int) -> list[Item]:
    rnd = random.Random(seed)
    items = history(rnd, [f"r{i}" for i in range(rooms)], events)
    s.users(ACCOUNTS)
    s.publish(redelivered(rnd, items))
    return items


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_equals_the_oracle(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as s:
        items = _publish_history(s, seed=7, rooms=60, events=3_000)
        # the test's own durable redelivers un-acked work after 3 s rather than the production minute
        flow = s.flow(CHATFED_FLUSH_MS="20", CHATFED_PULL_BATCH="100", CHATFED_ACK_WAIT_S="3").start()
        try:

            async def some_acked() -> bool:
                info = await s.js.consumer_info(names.inbox_stream(s.site), names.INBOX_WORKER_DURABLE)
                return info.ack_floor.stream_seq > 300

            s.run(wait_for(some_acked, timeout=60, interval=0.02, what="some progress"))
        finally:
            flow.kill()
        info = s.run(s.js.consumer_info(names.inbox_stream(s.site), names.INBOX_WORKER_DURABLE))
        assert info.num_pending + info.num_ack_pending > 0, "killed too late: nothing was left in flight"
        with s.flow(CHATFED_ACK_WAIT_S="3") as again:
            s.drained(timeout=120)
            again.assert_alive()
        assert s.present() == oracle(items)


@pytest.mark.slow
def test_two_processes_give_the_same_collection_as_one(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as one, mirror_site(servers) as two:
        items = _publish_history(one, seed=11, rooms=40, events=1_500)
        assert _publish_history(two, seed=11, rooms=40, events=1_500) == items
        with one.flow() as f1, two.flow(processes=2) as f2:
            one.drained(timeout=120)
            two.drained(timeout=120)
            f1.assert_alive()
            f2.assert_alive()
        assert one.present() == oracle(items)
        assert snapshot(two) == snapshot(one)

