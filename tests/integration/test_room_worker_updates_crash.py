"""A room_worker killed between the writes and the publishes of a role update or a rename publishes each event once after the retry."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import names
from schemas.streams import MAX_DELIVER
from testkit.crashing_room_worker import KILLED
from testkit.room_harness import Event, RoomHarness, run, user, with_harness
from testkit.support import wait_for

TS = 1767225600000
CRASHING = "testkit.crashing_room_worker"  # the room_worker flow over a store that exits 137 after writes with events


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [user("alice", home), user("bob", home), user("carol", remote)]


async def _crash_then_recover(h: RoomHarness, op: str, body: dict[str, Any], rid: str, written: Callable[[], bool]) -> dict[str, Any]:
    """Send `op` to a worker that dies after its writes, then let a healthy one take the redelivery; returns the result."""
    assert h.flow is not None
    h.flow.stop()
    before = len(await h.local_events()) + len(await h.outbox_events())
    answer = await h.client.subscribe(f"chat.user.{body['requesterAccount']}.response.{rid}")
    h.start_flow(CRASHING, CHATFED_ACK_WAIT_S="2")
    await h.send(op, body, request_id=rid)
    crashed = h.flow
    assert crashed is not None
    await wait_for(lambda: all(p.poll() is not None for p in crashed.procs), timeout=30, what="the worker to die at the crash hook")
    assert [p.returncode for p in crashed.procs] == [KILLED], "the worker died of the crash hook, not of something else"
    crashed.procs.clear()
    assert written(), "the writes happen before the crash"
    assert len(await h.local_events()) + len(await h.outbox_events()) == before, "the crash comes before any publish"
    h.start_flow(CHATFED_ACK_WAIT_S="2")
    result: dict[str, Any] = json.loads((await answer.next_msg(timeout=60)).data)
    await h.drained()
    return result


def _once(events: list[Event]) -> None:
    assert set(Counter(e.msg_id for e in events).values()) == {1}


def test_role_update_and_rename_publish_once_after_a_crash_between_writes_and_publishes(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        # a short ack_wait so the killed worker's command comes back within the test
        config = ConsumerConfig(
            durable_name=names.ROOM_WORKER_DURABLE, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=2, max_deliver=MAX_DELIVER
        )
        assert h.flow is not None
        h.flow.stop()  # a flow refuses a durable whose ack wait differs from its own: restarted with the short one
        await h.client.jetstream().add_consumer(names.rooms_stream(h.site), config)
        h.start_flow(CHATFED_ACK_WAIT_S="2")
        create = {"name": "eng", "users": ["bob", "carol"], "roomId": "r-crash", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", create, requester="alice"))["status"] == "ok"
        notices = await h.client.subscribe("chat.user.carol.event.subscription.update")

        role_id = "0195f0a2-0000-7000-8000-00000000e001"
        role = {"roomId": "r-crash", "account": "carol", "newRole": "owner", "requesterAccount": "alice", "timestamp": TS + 1}
        result = await _crash_then_recover(h, "member.role-update", role, role_id, lambda: h.subs("r-crash")["carol"]["roles"] == ["member", "owner"])
        assert (result["status"], result["operation"]) == ("ok", "room.member.role_update")
        notice = json.loads((await notices.next_msg(timeout=30)).data)  # sent by the retry (at least once, like a result)
        assert notice["subscription"]["roles"] == ["member", "owner"]

        rename_id = "0195f0a2-0000-7000-8000-00000000e002"
        rename = {"roomId": "r-crash", "newName": "platform", "requesterAccount": "alice", "timestamp": TS + 2}
        result = await _crash_then_recover(h, "rename", rename, rename_id, lambda: {s["name"] for s in h.subs("r-crash").values()} == {"platform"})
        assert (result["status"], result["operation"]) == ("ok", "room.rename")

        local, outbox = await h.local_events(), await h.outbox_events()
        assert [(e.envelope["type"], e.msg_id) for e in local[1:]] == [("room_renamed", f"{rename_id}:{h.site}")]
        assert [(e.envelope["type"], e.msg_id) for e in outbox[1:]] == [("role_updated", f"{role_id}:{h.other}"), ("room_renamed", f"{rename_id}:{h.other}")]
        _once(local + outbox)
        room = h.db.rooms.find_one({"_id": "r-crash"})
        assert room is not None and room["name"] == "platform"

    run(with_harness(servers, _people, scenario))
