"""room_worker on the real two-domain layout: a channel created on s1 reaches INBOX_s2 over the leafnode, once."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from pymongo import MongoClient

from connectors.mongo import ensure_indexes
from schemas import names, subjects
from testkit.clients import mongo_client
from testkit.support import FlowProcess, connect_site, flow_env, wait_drained, wait_for


async def _aggregate_for(servers: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    """Envelopes on INBOX_s2's aggregate lane about `room_id`."""
    nc = await connect_site(servers, "s2")
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            subjects.inbox_aggregate_filter("s2"),
            stream=names.inbox_stream("s2"),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        found: list[dict[str, Any]] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except TimeoutError:
                    return found
                if not msg.data.startswith(b'{"type":'):  # other tests share this lane with raw bodies
                    continue
                envelope = json.loads(msg.data)
                inner = json.loads(base64.b64decode(envelope["payload"]))
                if inner.get("roomId") == room_id:
                    found.append({"subject": msg.subject, "envelope": envelope, "inner": inner})
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


async def _barrier_through(js1: JetStreamContext, js2: JetStreamContext, tag: str) -> None:
    """Barrier: a raw marker on OUTBOX_s1 for s2, until INBOX_s2 has it. Sourcing keeps OUTBOX_s1's order, so
    whatever room_worker published there before (it publishes before it acks, and it has drained) is there too."""
    event_type = f"barrier-{tag}"
    await js1.publish(subjects.outbox(origin="s1", dest="s2", event_type=event_type), b"barrier", headers={"Nats-Msg-Id": f"{event_type}:s2"})

    async def arrived() -> bool:
        try:
            await js2.get_last_msg(names.inbox_stream("s2"), subjects.inbox_aggregate("s2", event_type))
        except NotFoundError:
            return False
        return True

    await wait_for(arrived, timeout=30, what="the barrier on INBOX_s2")


def test_channel_created_on_s1_reaches_inbox_s2_exactly_once(federated_sites: dict[str, Any]) -> None:
    servers = federated_sites
    tag = uuid.uuid4().hex[:8]
    alice, bob, carol = f"alice-{tag}", f"bob-{tag}", f"carol-{tag}"
    room_id = f"r-{tag}"
    mongo: MongoClient[Any] = mongo_client(servers, retryWrites=False)
    db = mongo["chat_s1"]
    ensure_indexes(db)
    db.users.insert_many([{"_id": f"u-{a}", "account": a, "siteId": s} for a, s in ((alice, "s1"), (bob, "s1"), (carol, "s2"))])

    async def scenario() -> None:
        nc = await connect_site(servers, "s1")
        try:
            js = nc.jetstream()
            body = {"name": "fed", "users": [bob, carol], "roomId": room_id, "requesterAccount": alice, "timestamp": 1767225600000}
            sub = await nc.subscribe(subjects.command_result(account=alice, request_id=(rid := str(uuid.uuid4()))))
            await js.publish(subjects.rooms_command("s1", "create"), json.dumps(body).encode(), headers={"X-Request-ID": rid})
            result = json.loads((await sub.next_msg(timeout=30)).data)
            assert result["status"] == "ok"
            await wait_drained(js, names.rooms_stream("s1"), names.ROOM_WORKER_DURABLE)
            s2 = await connect_site(servers, "s2")
            try:
                await _barrier_through(js, s2.jetstream(), tag)
            finally:
                await s2.close()
        finally:
            await nc.close()
        [event] = await wait_for(lambda: _aggregate_for(servers, room_id), timeout=30, what="the aggregate member_added on INBOX_s2")
        assert event["subject"] == "chat.inbox.s2.aggregate.member_added"
        assert (event["envelope"]["siteId"], event["envelope"]["destSiteId"]) == ("s1", "s2")
        assert event["inner"]["accounts"] == [carol]
        assert (event["inner"]["roomType"], event["inner"]["requesterAccount"]) == ("channel", alice)
        assert len(await _aggregate_for(servers, room_id)) == 1  # nothing else came before the barrier

    try:
        with FlowProcess("dataflows.room_worker", flow_env(servers, "s1")):
            asyncio.run(scenario())
    finally:
        db.subscriptions.delete_many({"roomId": room_id})
        db.rooms.delete_one({"_id": room_id})
        db.users.delete_many({"account": {"$in": [alice, bob, carol]}})
        mongo.close()
