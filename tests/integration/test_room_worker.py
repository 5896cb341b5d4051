"""room_worker against real NATS and MongoDB: create, add and remove, on two test sites of one server."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from testkit.room_harness import RoomHarness, run, user, with_harness

TS = 1767225600000


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [
        user("alice", home),
        user("bob", home),
        user("carol", remote),
        user("dave", remote, sectId="org-sales"),
        user("erin", home, deptId="org-sales"),
        user("sales.bot", home, sectId="org-sales"),
        user("helper.bot", remote, _id="u-helperbot"),  # a room id is one subject token: no "." from a user id
    ]


def _channel(room_id: str, **extra: Any) -> dict[str, Any]:
    body = {"name": "eng-platform", "users": ["bob", "carol"], "roomId": room_id, "requesterAccount": "alice", "timestamp": TS}
    body.update(extra)
    return body


def test_create_channel_writes_state_and_announces_each_site_once(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        result = await h.call("create", _channel("r-eng", orgs=["org-sales"]), requester="alice", request_id=RID)
        assert (result["status"], result["operation"], result["roomId"]) == ("ok", "room.create", "r-eng")
        room = h.db.rooms.find_one({"_id": "r-eng"})
        assert room is not None
        assert (room["type"], room["siteId"], room["name"], room["userCount"], room["appCount"]) == ("channel", h.site, "eng-platform", 5, 0)
        subs = h.subs("r-eng")
        assert sorted(subs) == ["alice", "bob", "carol", "dave", "erin"]  # the org's bot is not expanded
        assert subs["alice"]["roles"] == ["owner"]
        assert all(subs[a]["roles"] == ["member"] for a in ("bob", "carol", "dave", "erin"))
        assert {s["name"] for s in subs.values()} == {"eng-platform"}
        assert {s["siteId"] for s in subs.values()} == {h.site}
        assert not any(s["isSubscribed"] for s in subs.values())
        rows = {(r["member"]["type"], r["member"]["id"]) for r in h.db.room_members.find({"rid": "r-eng"})}
        assert rows == {("individual", "u-alice"), ("individual", "u-bob"), ("individual", "u-carol"), ("org", "org-sales")}

        [local] = await h.local_events()
        assert local.subject == f"chat.inbox.{h.site}.member_added"
        assert local.msg_id == f"{RID}:{h.site}"
        assert local.envelope["siteId"] == local.envelope["destSiteId"] == h.site
        assert local.inner["accounts"] == ["alice", "bob", "carol", "dave", "erin"]
        assert (local.inner["roomType"], local.inner["requesterAccount"], local.inner["joinedAt"]) == ("channel", "alice", TS)
        assert "historySharedSince" not in local.inner
        [remote] = await h.aggregate_events(1)
        assert remote.subject == f"chat.inbox.{h.other}.aggregate.member_added"
        assert remote.msg_id == f"{RID}:{h.other}"
        assert remote.envelope["destSiteId"] == h.other
        assert remote.inner["accounts"] == ["carol", "dave"]
        assert (remote.inner["roomType"], remote.inner["requesterAccount"], remote.inner["roomName"]) == ("channel", "alice", "eng-platform")

    RID = "0195f0a2-7c1d-7e3a-9b41-5d2c8e6f1a20"
    run(with_harness(servers, _people, scenario))


def test_dm_and_botdm_across_sites_name_each_side_after_the_other(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        dm = {"users": ["carol"], "roomId": "u-aliceu-carol", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", dm, requester="alice"))["status"] == "ok"
        bot = {"users": ["helper.bot"], "roomId": "u-aliceu-helperbot", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", bot, requester="alice"))["status"] == "ok"

        subs = h.subs("u-aliceu-carol")
        assert {a: (s["name"], s["roles"], s["isSubscribed"], s["roomType"]) for a, s in subs.items()} == {
            "alice": ("carol", None, False, "dm"),
            "carol": ("alice", None, False, "dm"),
        }
        subs = h.subs("u-aliceu-helperbot")
        assert {a: (s["name"], s["roles"], s["isSubscribed"], s["u"]["isBot"]) for a, s in subs.items()} == {
            "alice": ("helper.bot", None, True, False),
            "helper.bot": ("alice", None, False, True),
        }
        bot_room = h.db.rooms.find_one({"_id": "u-aliceu-helperbot"})
        assert bot_room is not None and (bot_room["name"], bot_room["userCount"], bot_room["appCount"]) == ("", 1, 1)
        local = await h.local_events()
        assert [(e.inner["roomType"], e.inner["accounts"], e.inner["roomName"]) for e in local] == [
            ("dm", ["alice", "carol"], ""),
            ("botDM", ["alice", "helper.bot"], ""),
        ]
        remote = await h.aggregate_events(2)
        assert [(e.inner["roomType"], e.inner["accounts"], e.inner["requesterAccount"]) for e in remote] == [
            ("dm", ["carol"], "alice"),
            ("botDM", ["helper.bot"], "alice"),
        ]

    run(with_harness(servers, _people, scenario))


def test_redelivered_commands_change_nothing_and_publish_nothing_new(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        commands = [
            ("create", _channel("r-dup"), str(uuid.uuid4())),
            ("member.add", {"roomId": "r-dup", "users": ["dave"], "requesterAccount": "alice", "timestamp": TS + 1}, str(uuid.uuid4())),
            ("member.remove", {"roomId": "r-dup", "requester": "alice", "account": "bob", "timestamp": TS + 2}, str(uuid.uuid4())),
        ]
        for op, body, rid in commands:
            assert (await h.call(op, body, requester="alice", request_id=rid))["status"] == "ok"
            state = (h.subs("r-dup"), h.db.rooms.find_one({"_id": "r-dup"}), list(h.db.room_members.find()))
            published = Counter(e.msg_id for e in await h.local_events() + await h.outbox_events())
            assert set(published.values()) == {1}
            # the same request id again, as a JetStream redelivery brings it
            assert (await h.call(op, body, requester="alice", request_id=rid))["status"] == "ok"
            await h.drained()
            assert (h.subs("r-dup"), h.db.rooms.find_one({"_id": "r-dup"}), list(h.db.room_members.find())) == state
            assert Counter(e.msg_id for e in await h.local_events() + await h.outbox_events()) == published
        assert len(published) == 5  # create: local + s2, add: local + s2, remove of a local user: local

    run(with_harness(servers, _people, scenario))


def test_add_members_with_hidden_history_and_adding_existing_members(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        assert (await h.call("create", _channel("r-hist"), requester="alice"))["status"] == "ok"
        add = {"roomId": "r-hist", "users": ["dave", "erin"], "history": {"mode": "none"}, "requesterAccount": "alice", "timestamp": TS + 10}
        result = await h.call("member.add", add, requester="alice")
        assert (result["status"], result["operation"]) == ("ok", "room.member.add")
        subs = h.subs("r-hist")
        assert subs["dave"]["historySharedSince"] == subs["erin"]["historySharedSince"] == TS + 10
        assert subs["dave"]["roles"] == ["member"] and "historySharedSince" not in subs["bob"]
        local = await h.local_events()
        assert len(local) == 2
        assert (local[1].inner["accounts"], local[1].inner["historySharedSince"], local[1].inner["joinedAt"]) == (["dave", "erin"], TS + 10, TS + 10)
        remote = await h.aggregate_events(2)
        assert (remote[1].inner["accounts"], remote[1].inner["historySharedSince"]) == (["dave"], TS + 10)

        only_existing = {"roomId": "r-hist", "users": ["bob", "dave"], "requesterAccount": "alice", "timestamp": TS + 20}
        assert (await h.call("member.add", only_existing, requester="alice"))["status"] == "ok"
        assert len(await h.local_events()) == 2 and len(await h.outbox_events()) == 2

    run(with_harness(servers, _people, scenario))


def test_remove_member_and_org_keeps_individual_members(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        create = _channel("r-rm", users=["bob", "carol", "erin"], orgs=["org-sales"])
        assert (await h.call("create", create, requester="alice"))["status"] == "ok"
        remove_carol = {"roomId": "r-rm", "requester": "alice", "account": "carol", "timestamp": TS + 1}
        result = await h.call("member.remove", remove_carol, requester="alice")
        assert (result["status"], result["operation"]) == ("ok", "room.member.remove")
        leave = {"roomId": "r-rm", "requester": "bob", "account": "bob", "timestamp": TS + 2}
        assert (await h.call("member.remove", leave, requester="bob"))["status"] == "ok"
        remove_org = {"roomId": "r-rm", "requester": "alice", "orgId": "org-sales", "timestamp": TS + 3}
        result = await h.call("member.remove", remove_org, requester="alice")
        assert (result["status"], result["operation"]) == ("ok", "room.member.remove_org")

        assert sorted(h.subs("r-rm")) == ["alice", "erin"]  # erin is also in on her own
        room = h.db.rooms.find_one({"_id": "r-rm"})
        assert room is not None and room["userCount"] == 2
        assert h.db.room_members.count_documents({"rid": "r-rm", "member.type": "org"}) == 0
        removed = [e for e in await h.local_events() if e.envelope["type"] == "member_removed"]
        assert [(e.inner["type"], e.inner["accounts"], e.inner.get("orgId")) for e in removed] == [
            ("member_removed", ["carol"], None),
            ("member_left", ["bob"], None),
            ("member_removed", ["dave"], "org-sales"),
        ]
        remote = [e for e in await h.aggregate_events(3) if e.envelope["type"] == "member_removed"]
        assert [(e.inner["accounts"], e.inner.get("orgId")) for e in remote] == [(["carol"], None), (["dave"], "org-sales")]

    run(with_harness(servers, _people, scenario))
