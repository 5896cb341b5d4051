"""A large room end to end in chunked events (issue 12, item 3): two sites, every flow, room_worker at 50 accounts per event.

A channel created with 300 members (150 homed on each site), an org of 120 (60 and 60) added and then removed, and
client retries of those requests: every home and remote subscription, user-room entry and spotlight document on
both sites ends as expected, and the streams hold exactly the chunks decided the first time (ids and all).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from dataflows.room_worker.events import dedup_id
from schemas import names, subjects
from testkit.stack import Stack

LIMIT = 50
T0 = 1_767_225_600_000


async def msg_ids(stack: Stack, stream: str, filter_subject: str) -> list[str]:
    """The `Nats-Msg-Id` of every message of `stream` under `filter_subject`, in stream order (read until the count)."""
    js = stack.client.jetstream()
    info = await js.stream_info(stream, subjects_filter=filter_subject)
    count = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(filter_subject, stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    try:
        return [((await sub.next_msg(timeout=10)).headers or {}).get("Nats-Msg-Id", "") for _ in range(count)]
    finally:
        await sub.unsubscribe()


def chunk_ids(base: str, site: str, accounts: int) -> list[str]:
    return [dedup_id(base, site, k) for k in range(-(-accounts // LIMIT))]


async def scenario(stack: Stack, tag: str, users: dict[str, str]) -> None:
    home, remote = stack.sites
    room = f"r-{tag}"
    alice, marker = f"alice-{tag}", f"marker-{tag}"
    everyone = [a for a in users if a.startswith("p")]
    org = [a for a in users if a.startswith("o")]
    for site in stack.sites:  # the org's members, known on both sites (inbox_mirror needs its users)
        stack.db(site).users.insert_many([{"_id": f"u-{a}", "account": a, "siteId": users[a], "sectId": f"org-{tag}"} for a in org])

    async def call(op: str, body: dict[str, Any], rid: str) -> dict[str, Any]:
        return await stack.call(home, op, body, requester=alice, request_id=rid, timeout=120)

    create = {"name": f"company {tag}", "users": everyone, "roomId": room, "requesterAccount": alice, "timestamp": T0}
    add_org = {"roomId": room, "users": [], "orgs": [f"org-{tag}"], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 1}
    remove_org = {"roomId": room, "requester": alice, "orgId": f"org-{tag}", "timestamp": T0 + 2}
    steps = [("create", create, str(uuid.uuid4())), ("member.add", add_org, str(uuid.uuid4())), ("member.remove", remove_org, str(uuid.uuid4()))]
    answers = []
    for op, body, rid in steps:
        answer = await call(op, body, rid)
        assert answer["status"] == "ok", answer
        answers.append(answer)
    for (op, body, rid), answer in zip(steps, answers, strict=True):  # client retries: the recorded answer, nothing else
        assert await call(op, body, rid) == answer
    # barrier: a later command of the same room, seen by every store, then every durable drained
    barrier, barrier_id = {"roomId": room, "users": [marker], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 3}, str(uuid.uuid4())
    assert (await call("member.add", barrier, barrier_id))["status"] == "ok"
    await stack.drained(timeout=300)
    stack.assert_alive()

    members = {alice, *everyone, marker}
    for site in stack.sites:
        assert stack.views(site) == stack.expected(site, {room: members}, {room: home}, users), f"stores of {site}"

    local = await msg_ids(stack, names.inbox_stream(home), subjects.inbox_local_filter(home))
    outbox = await msg_ids(stack, names.outbox_stream(home), ">")
    create_id, add_id, remove_id = [rid for _, _, rid in steps]
    assert local == [*chunk_ids(create_id, home, 300), *chunk_ids(add_id, home, 120), *chunk_ids(remove_id, home, 120), dedup_id(barrier_id, home)]
    assert outbox == [*chunk_ids(create_id, remote, 150), *chunk_ids(add_id, remote, 60), *chunk_ids(remove_id, remote, 60), dedup_id(barrier_id, remote)]


@pytest.mark.slow
def test_a_300_member_channel_in_chunks_reaches_every_store_of_both_sites(servers: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    stack = Stack(servers)

    async def run() -> None:
        try:
            home, remote = stack.sites
            users = {f"alice-{tag}": home, f"marker-{tag}": remote}
            users |= {f"p{i:03}-{tag}": home if i % 2 else remote for i in range(299)}  # with alice: 150 on each site
            org = {f"o{i:03}-{tag}": home if i % 2 else remote for i in range(120)}
            await stack.open(users.items(), env_by_flow={names.ROOM_WORKER_FLOW: {"CHATFED_EVENT_MAX_ACCOUNTS": str(LIMIT)}})
            await scenario(stack, tag, users | org)
        finally:
            await stack.close()

    asyncio.run(run())
