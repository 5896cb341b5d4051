"""room_worker's bad commands: an error result with the right code, a dead letter with the reason, and the flow goes on."""

from __future__ import annotations

import json
from typing import Any

from schemas import carriers
from testkit.room_harness import RoomHarness, run, user, with_harness

TS = 1767225600000


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [user("alice", home), user("bob", home), user("carol", remote)]


def test_bad_commands_are_answered_and_dead_lettered(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        dm = {"users": ["bob"], "roomId": "u-aliceu-bob", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", dm, requester="alice"))["status"] == "ok"
        cases: list[tuple[str, dict[str, Any], str, str]] = [
            ("create", {"name": "x", "users": ["bob"], "roomId": "r1", "requesterAccount": "alice"}, "alice", "bad_request"),
            ("create", {"name": "x", "users": ["bob"], "roomId": "r2", "requesterAccount": "nobody", "timestamp": TS}, "nobody", "not_found"),
            ("member.add", {"roomId": "u-aliceu-bob", "users": ["carol"], "requesterAccount": "alice", "timestamp": TS}, "alice", "bad_request"),
            ("member.remove", {"roomId": "u-aliceu-bob", "requester": "alice", "account": "bob", "orgId": "o", "timestamp": TS}, "alice", "bad_request"),
            ("create", {"name": "x", "users": ["bob"], "roomId": "u-aliceu-bob", "requesterAccount": "alice", "orgs": ["o"], "timestamp": TS}, "alice", "conflict"),
        ]
        for op, body, requester, code in cases:
            result = await h.call(op, body, requester=requester)
            assert (result["status"], result["code"]) == ("error", code), (op, body, result)
            assert result["error"]
        await h.send("create", b"{not json")  # no requester to answer: dead-lettered only
        await h.client.jetstream().publish(f"chat.room.canonical.{h.site}.event.member.muted", b"{}")  # acked, ignored
        # the flow keeps going, also for a command without a request id (dedup by payload seed)
        channel = {"name": "after", "users": ["carol"], "roomId": "r-after", "requesterAccount": "alice", "timestamp": TS}
        await h.send("create", channel, request_id="")
        await h.drained()
        assert sorted(h.subs("r-after")) == ["alice", "carol"]
        outbox = await h.outbox_events()
        assert outbox[-1].msg_id == f"r-after:alice:{TS}:{h.other}"

        dead = await h.dead_letters()
        reasons = [m.headers[carriers.DLQ_REASON] for m in dead if m.headers]
        assert len(dead) == len(cases) + 1
        assert [r.split(":", 1)[0] for r in reasons] == [code for *_, code in cases] + ["bad_request"]
        assert all(m.headers and m.headers[carriers.DLQ_FLOW] == "room_worker" for m in dead)
        assert json.loads(dead[1].data)["requesterAccount"] == "nobody"
        assert h.db.rooms.count_documents({"_id": {"$in": ["r1", "r2"]}}) == 0
        room = h.db.rooms.find_one({"_id": "u-aliceu-bob"})
        assert room is not None and room["type"] == "dm"

    run(with_harness(servers, _people, scenario))


BAD_CHARS = {"dot": ".", "star": "*", "gt": ">", "space": " "}


def test_ids_that_are_not_one_subject_token_are_refused_with_bad_request(servers: dict[str, Any]) -> None:
    """Issue 7: a room id or user account containing `.`, `*`, `>` or a space is refused, nothing written or published."""

    async def scenario(h: RoomHarness) -> None:
        cases: list[tuple[str, dict[str, Any]]] = []
        for name, bad in BAD_CHARS.items():
            cases += [
                ("create", {"name": "x", "users": ["bob"], "roomId": f"r{bad}{name}", "requesterAccount": "alice", "timestamp": TS}),
                ("create", {"name": "x", "users": [f"bob{bad}x"], "roomId": f"r-user-{name}", "requesterAccount": "alice", "timestamp": TS}),
                ("member.add", {"roomId": "r-ok", "users": [f"carol{bad}x"], "requesterAccount": "alice", "timestamp": TS}),
                ("member.remove", {"roomId": f"r-ok{bad}", "requester": "alice", "account": "bob", "timestamp": TS}),
                ("member.remove", {"roomId": "r-ok", "requester": "alice", "account": f"b{bad}ob", "timestamp": TS}),
            ]
        ok = {"name": "ok", "users": ["bob", "carol"], "roomId": "r-ok", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", ok, requester="alice"))["status"] == "ok"
        before = len(await h.outbox_events()), len(await h.local_events())
        for op, body in cases:
            result = await h.call(op, body, requester="alice")
            assert (result["status"], result["code"]) == ("error", "bad_request"), (op, body, result)
            assert result["error"].startswith("invalid"), result
        # a requester account that is not a token has no result subject: dead letter only, never a malformed subject
        await h.send("create", {"name": "x", "users": ["bob"], "roomId": "r-req", "requesterAccount": "al.ice", "timestamp": TS})
        await h.drained()
        dead = await h.dead_letters()
        reasons = [m.headers[carriers.DLQ_REASON] for m in dead if m.headers]
        assert len(reasons) == len(cases) + 1 and all(r.startswith("bad_request: invalid") for r in reasons), reasons
        assert (len(await h.outbox_events()), len(await h.local_events())) == before
        assert h.db.rooms.count_documents({}) == 1 and sorted(h.subs("r-ok")) == ["alice", "bob", "carol"]

    run(with_harness(servers, _people, scenario))
