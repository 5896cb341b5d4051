"""room_worker answers a request id exactly once, and never merges two creates of one channel id (issue 10, items 1 and 4)."""

from __future__ import annotations

from typing import Any

from testkit.room_harness import RoomHarness, run, user, with_harness

TS = 1767225600000


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [user("alice", home), user("bob", home), user("carol", remote), user("dave", home)]


def test_a_channel_id_that_exists_is_a_conflict_unless_it_is_the_same_request(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        first = {"name": "one", "users": ["bob", "carol"], "roomId": "r-taken", "requesterAccount": "alice", "timestamp": TS}
        answer = await h.call("create", first, requester="alice", request_id="0b0c4a57-8a0f-4e39-9d4c-5a4bb4c56a01")
        assert answer["status"] == "ok"
        other = {"name": "two", "users": ["dave"], "roomId": "r-taken", "requesterAccount": "alice", "timestamp": TS + 1}
        clash = await h.call("create", other, requester="alice")
        assert (clash["status"], clash["code"]) == ("error", "conflict"), clash
        replay = await h.call("create", first, requester="alice", request_id="0b0c4a57-8a0f-4e39-9d4c-5a4bb4c56a01")
        assert replay == answer  # the recorded result, timestamp and all
        await h.drained()
        assert sorted(h.subs("r-taken")) == ["alice", "bob", "carol"]  # dave never merged in
        room = h.db.rooms.find_one({"_id": "r-taken"})
        assert room is not None and (room["name"], room["userCount"]) == ("one", 3)
        assert len(await h.local_events()) == 1 and len(await h.outbox_events()) == 1  # the replay published nothing

    run(with_harness(servers, _people, scenario))


def test_a_dm_that_exists_is_answered_ok_without_new_events(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        dm = {"users": ["bob"], "roomId": "u-aliceu-bob", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", dm, requester="alice"))["status"] == "ok"
        again = {"users": ["alice"], "roomId": "u-aliceu-bob", "requesterAccount": "bob", "timestamp": TS + 5}
        assert (await h.call("create", again, requester="bob"))["status"] == "ok"  # the counterpart opens it too
        await h.drained()
        assert sorted(h.subs("u-aliceu-bob")) == ["alice", "bob"]
        assert len(await h.local_events()) == 1

    run(with_harness(servers, _people, scenario))


def test_a_failed_request_keeps_its_error_when_retried_after_the_world_changed(servers: dict[str, Any]) -> None:
    """One request id, one outcome: an add refused for a missing room stays refused once the room exists."""

    async def scenario(h: RoomHarness) -> None:
        rid = "5d1f1d55-3f0c-4a55-8f8e-2a5b9b1f0c11"
        add = {"roomId": "r-later", "users": ["bob"], "history": {"mode": "all"}, "requesterAccount": "alice", "timestamp": TS}
        refused = await h.call("member.add", add, requester="alice", request_id=rid)
        assert (refused["status"], refused["code"]) == ("error", "not_found")
        create = {"name": "later", "users": ["carol"], "roomId": "r-later", "requesterAccount": "alice", "timestamp": TS + 1}
        assert (await h.call("create", create, requester="alice"))["status"] == "ok"
        assert await h.call("member.add", add, requester="alice", request_id=rid) == refused
        await h.drained()
        assert sorted(h.subs("r-later")) == ["alice", "carol"]
        assert len(await h.dead_letters()) == 1  # the original, not its retry

    run(with_harness(servers, _people, scenario))
