"""A room_worker killed between its MongoDB writes and its publishes still publishes every event exactly once."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import names
from schemas.streams import MAX_DELIVER
from testkit.crashing_room_worker import KILLED
from testkit.room_harness import RoomHarness, run, user, with_harness
from testkit.support import FlowProcess, wait_for

TS = 1767225600000
CRASHING = "testkit.crashing_room_worker"  # the room_worker flow over a store that exits 137 after writes with events


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [user("alice", home), user("bob", home), user("carol", remote), user("dave", remote), user("erin", home)]


async def _died_at_the_crash_hook(crashed: FlowProcess) -> None:
    await wait_for(lambda: all(p.poll() is not None for p in crashed.procs), timeout=30, what="the worker to die at the crash hook")
    assert [p.returncode for p in crashed.procs] == [KILLED], "the worker died of the crash hook, not of something else"
    crashed.procs.clear()


async def _crash_then_recover(h: RoomHarness, op: str, body: dict[str, Any], rid: str, written: list[str]) -> None:
    """Run `op` on a worker that dies after its writes, then on a healthy one (redelivery after ack_wait)."""
    assert h.flow is not None
    h.flow.stop()
    published = len(await h.local_events())
    h.start_flow(CRASHING, CHATFED_ACK_WAIT_S="2")
    await h.send(op, body, request_id=rid)
    assert h.flow is not None
    await _died_at_the_crash_hook(h.flow)
    assert sorted(h.subs(body["roomId"])) == written, "the writes happen before the crash"
    assert len(await h.local_events()) == published, "the crash comes before any publish"
    h.start_flow(CHATFED_ACK_WAIT_S="2")
    await h.drained()


def test_crash_between_writes_and_publishes_publishes_once_after_redelivery(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        # a short ack_wait so the killed worker's command comes back within the test
        js = h.client.jetstream()
        config = ConsumerConfig(
            durable_name=names.ROOM_WORKER_DURABLE, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=2, max_deliver=MAX_DELIVER
        )
        await js.add_consumer(names.rooms_stream(h.site), config)

        create = {"name": "eng", "users": ["bob", "carol"], "roomId": "r-crash", "requesterAccount": "alice", "timestamp": TS}
        await _crash_then_recover(h, "create", create, "0195f0a2-0000-7000-8000-00000000c001", ["alice", "bob", "carol"])
        add = {"roomId": "r-crash", "users": ["dave", "erin"], "requesterAccount": "alice", "timestamp": TS + 1}
        everyone = ["alice", "bob", "carol", "dave", "erin"]
        await _crash_then_recover(h, "member.add", add, "0195f0a2-0000-7000-8000-00000000c002", everyone)

        assert sorted(h.subs("r-crash")) == ["alice", "bob", "carol", "dave", "erin"]
        local = await h.local_events()
        assert [e.inner["accounts"] for e in local] == [["alice", "bob", "carol"], ["dave", "erin"]]
        outbox = await h.outbox_events()
        assert [e.inner["accounts"] for e in outbox] == [["carol"], ["dave"]]
        assert set(Counter(e.msg_id for e in local + outbox).values()) == {1}

    run(with_harness(servers, _people, scenario))


def test_a_later_command_finishes_the_crashed_one_first(servers: dict[str, Any]) -> None:
    """The room's next command meets the intent the crashed worker left, and carries it out before itself."""

    async def scenario(h: RoomHarness) -> None:
        create = {"name": "eng", "users": ["bob"], "roomId": "r-next", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", create, requester="alice"))["status"] == "ok"
        assert h.flow is not None
        h.flow.stop()
        h.start_flow(CRASHING)  # the durable keeps its 60 s ack wait: no quick redelivery
        add = {"roomId": "r-next", "users": ["carol"], "history": {"mode": "all"}, "requesterAccount": "alice", "timestamp": TS + 1}
        add_id = "0195f0a2-0000-7000-8000-00000000d001"
        answer = await h.client.subscribe(f"chat.user.alice.response.{add_id}")
        await h.send("member.add", add, request_id=add_id)
        assert h.flow is not None
        await _died_at_the_crash_hook(h.flow)
        h.start_flow()
        remove = {"roomId": "r-next", "requester": "alice", "account": "carol", "timestamp": TS + 2}
        assert (await h.call("member.remove", remove, requester="alice"))["status"] == "ok"
        assert json.loads((await answer.next_msg(timeout=30)).data)["status"] == "ok"  # the add was answered on its behalf
        assert sorted(h.subs("r-next")) == ["alice", "bob"]
        local = await h.local_events()
        assert [(e.envelope["type"], e.inner["accounts"]) for e in local[1:]] == [("member_added", ["carol"]), ("member_removed", ["carol"])]
        assert local[1].envelope["timestamp"] < local[2].envelope["timestamp"]

    run(with_harness(servers, _people, scenario))
