"""room_worker's role update, rename and add by channel on real NATS + FerretDB: stores, events, notices, one outcome per request."""

from __future__ import annotations

import json
from typing import Any

from nats.aio.subscription import Subscription
from pymongo import MongoClient

from connectors.mongo import Document, ensure_indexes
from dataflows.room_worker.outcomes import Rename, SetRoles
from dataflows.room_worker.store_mongo import RoomStore
from testkit.clients import mongo_client
from testkit.room_harness import RoomHarness, run, user, with_harness
from testkit.support import unique_site

TS = 1767225600000


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [
        user("alice", home), user("bob", home), user("carol", remote), user("frank", home),
        user("dave", remote, sectId="org-x"), user("erin", home, deptId="org-x"), user("x.bot", home, sectId="org-x"), user("helper.bot", home),
    ]


def _role(account: str, new_role: str, ts: int, requester: str = "alice") -> dict[str, Any]:
    return {"roomId": "r-eng", "account": account, "newRole": new_role, "requesterId": f"u-{requester}", "requesterAccount": requester, "timestamp": ts}


def _rename(name: str, ts: int, requester: str = "alice") -> dict[str, Any]:
    return {"roomId": "r-eng", "newName": name, "requesterId": f"u-{requester}", "requesterAccount": requester, "timestamp": ts}


async def _notices(sub: Subscription, count: int) -> list[dict[str, Any]]:
    return [json.loads((await sub.next_msg(timeout=30)).data) for _ in range(count)]


async def _eng(h: RoomHarness) -> None:
    create = {"name": "eng", "users": ["bob", "carol"], "roomId": "r-eng", "requesterAccount": "alice", "timestamp": TS}
    assert (await h.call("create", create, requester="alice"))["status"] == "ok"


def test_promote_and_demote_a_remote_member_once_per_request(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        await _eng(h)
        carol = await h.client.subscribe("chat.user.carol.event.subscription.update")
        promote_id, demote_id, marker_id = "0195f0a2-0000-7000-8000-0000000001a1", "0195f0a2-0000-7000-8000-0000000001a2", "0195f0a2-0000-7000-8000-0000000001a3"
        promoted = await h.call("member.role-update", _role("carol", "owner", TS + 10), requester="alice", request_id=promote_id)
        assert (promoted["status"], promoted["operation"], promoted["roomId"]) == ("ok", "room.member.role_update", "r-eng")
        sub = h.subs("r-eng")["carol"]
        assert (sub["roles"], sub["rolesUpdatedAt"]) == (["member", "owner"], TS + 10)
        demoted = await h.call("member.role-update", _role("carol", "member", TS + 20), requester="alice", request_id=demote_id)
        assert demoted["status"] == "ok" and h.subs("r-eng")["carol"]["roles"] == ["member"]

        # refusals: the last owner, a member who is not an owner; a retry of an answered request gets its answer again
        last = await h.call("member.role-update", _role("alice", "member", TS + 30), requester="alice")
        assert (last["status"], last["code"]) == ("error", "conflict"), last
        forbidden = await h.call("member.role-update", _role("bob", "owner", TS + 31, requester="bob"), requester="bob")
        assert (forbidden["status"], forbidden["code"]) == ("error", "forbidden"), forbidden
        assert await h.call("member.role-update", _role("carol", "owner", TS + 10), requester="alice", request_id=promote_id) == promoted
        marker = await h.call("member.role-update", _role("carol", "owner", TS + 40), requester="alice", request_id=marker_id)
        assert marker["status"] == "ok"
        await h.drained()

        events = [e for e in await h.outbox_events() if e.envelope["type"] == "role_updated"]
        assert [(e.subject, e.msg_id) for e in events] == [
            (f"outbox.{h.site}.to.{h.other}.role_updated", f"{rid}:{h.other}") for rid in (promote_id, demote_id, marker_id)
        ]
        assert [e.inner["subscription"]["roles"] for e in events] == [["member", "owner"], ["member"], ["member", "owner"]]
        first = events[0]
        assert (first.envelope["siteId"], first.envelope["destSiteId"]) == (h.site, h.other)
        assert first.inner == {
            "userId": "u-carol", "subscription": {"roomId": "r-eng", "u": {"account": "carol"}, "roles": ["member", "owner"]},
            "action": "role_updated", "timestamp": first.envelope["timestamp"],
        }
        aggregate = await h.aggregate_events(count=4)  # the member_added of the create, then the three role changes, sourced
        assert [e.envelope["type"] for e in aggregate] == ["member_added", "role_updated", "role_updated", "role_updated"]
        # the notices, in order: the retry sent none before the marker's
        notices = await _notices(carol, 3)
        assert [(n["action"], n["subscription"]["roles"]) for n in notices] == [
            ("role_updated", ["member", "owner"]), ("role_updated", ["member"]), ("role_updated", ["member", "owner"])
        ]
        assert (notices[0]["userId"], notices[0]["roomName"], notices[0]["subscription"]["u"]) == ("u-carol", "eng", {"id": "u-carol", "account": "carol", "isBot": False})
        assert len(await h.dead_letters()) == 2  # the two refusals

    run(with_harness(servers, _people, scenario))


def test_rename_updates_the_room_and_every_subscription_and_an_older_one_changes_nothing(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        await _eng(h)
        rid, older_id, marker_id = "0195f0a2-0000-7000-8000-0000000002b1", "0195f0a2-0000-7000-8000-0000000002b2", "0195f0a2-0000-7000-8000-0000000002b3"
        answer = await h.call("rename", _rename("platform", TS + 20), requester="alice", request_id=rid)
        assert (answer["status"], answer["operation"]) == ("ok", "room.rename")
        room = h.db.rooms.find_one({"_id": "r-eng"})
        assert room is not None and (room["name"], room["nameUpdatedAt"]) == ("platform", TS + 20)
        assert {a: (s["name"], s["nameUpdatedAt"]) for a, s in h.subs("r-eng").items()} == {a: ("platform", TS + 20) for a in ("alice", "bob", "carol")}

        older = await h.call("rename", _rename("older", TS + 10), requester="alice", request_id=older_id)
        assert older["status"] == "ok"  # accepted before the newer one, delivered after it: nothing changes
        room = h.db.rooms.find_one({"_id": "r-eng"})  # the answer comes after the writes
        assert room is not None and room["name"] == "platform" and {s["name"] for s in h.subs("r-eng").values()} == {"platform"}
        refused = await h.call("rename", _rename("mine", TS + 30, requester="bob"), requester="bob")
        assert (refused["status"], refused["code"]) == ("error", "forbidden")
        assert await h.call("rename", _rename("platform", TS + 20), requester="alice", request_id=rid) == answer
        assert (await h.call("rename", _rename("newest", TS + 40), requester="alice", request_id=marker_id))["status"] == "ok"
        await h.drained()

        local = [e for e in await h.local_events() if e.envelope["type"] == "room_renamed"]
        assert [(e.subject, e.msg_id, e.inner["newName"]) for e in local] == [
            (f"chat.inbox.{h.site}.room_renamed", f"{rid}:{h.site}", "platform"), (f"chat.inbox.{h.site}.room_renamed", f"{marker_id}:{h.site}", "newest")
        ]
        outbox = [e for e in await h.outbox_events() if e.envelope["type"] == "room_renamed"]
        assert [(e.subject, e.msg_id, e.inner["newName"]) for e in outbox] == [
            (f"outbox.{h.site}.to.{h.other}.room_renamed", f"{rid}:{h.other}", "platform"),
            (f"outbox.{h.site}.to.{h.other}.room_renamed", f"{marker_id}:{h.other}", "newest"),
        ]
        assert set(local[0].inner) == {"roomId", "newName", "timestamp"} and local[0].inner["roomId"] == "r-eng"
        room = h.db.rooms.find_one({"_id": "r-eng"})
        assert room is not None and room["name"] == "newest"
        assert {s["name"] for s in h.subs("r-eng").values()} == {"newest"}

    run(with_harness(servers, _people, scenario))


def test_add_by_channel_adds_individuals_and_org_members_without_bots_once_each(servers: dict[str, Any]) -> None:
    async def scenario(h: RoomHarness) -> None:
        source = {"name": "src", "users": ["bob", "carol", "helper.bot"], "orgs": ["org-x"], "roomId": "r-src", "requesterAccount": "alice", "timestamp": TS}
        assert (await h.call("create", source, requester="alice"))["status"] == "ok"
        assert sorted(h.subs("r-src")) == ["alice", "bob", "carol", "dave", "erin", "helper.bot"]
        target = {"name": "tgt", "users": ["frank"], "roomId": "r-tgt", "requesterAccount": "alice", "timestamp": TS + 1}
        assert (await h.call("create", target, requester="alice"))["status"] == "ok"

        outsider = {"roomId": "r-src", "channels": [{"roomId": "r-tgt", "siteId": h.site}], "requesterAccount": "dave", "timestamp": TS + 2}
        refused = await h.call("member.add", outsider, requester="dave")  # dave is not in r-tgt
        assert (refused["status"], refused["code"]) == ("error", "forbidden"), refused
        elsewhere = {"roomId": "r-tgt", "channels": [{"roomId": "r-far", "siteId": h.other}], "requesterAccount": "alice", "timestamp": TS + 2}
        refused = await h.call("member.add", elsewhere, requester="alice")
        assert (refused["status"], refused["code"]) == ("error", "bad_request") and h.other in refused["error"], refused

        add = {"roomId": "r-tgt", "users": ["bob"], "channels": [{"roomId": "r-src", "siteId": h.site}], "requesterAccount": "alice", "timestamp": TS + 3}
        assert (await h.call("member.add", add, requester="alice"))["status"] == "ok"
        await h.drained()
        assert sorted(h.subs("r-tgt")) == ["alice", "bob", "carol", "dave", "erin", "frank"]  # no bot, nobody twice
        assert h.db.subscriptions.count_documents({"roomId": "r-tgt"}) == 6
        added = [e for e in await h.local_events() if e.inner["roomId"] == "r-tgt"]
        assert [e.inner["accounts"] for e in added] == [["alice", "frank"], ["bob", "carol", "dave", "erin"]]
        remote = [e for e in await h.outbox_events() if e.inner["roomId"] == "r-tgt"]
        assert [e.inner["accounts"] for e in remote] == [["carol", "dave"]]
        room = h.db.rooms.find_one({"_id": "r-tgt"})
        assert room is not None and (room["userCount"], room["appCount"]) == (6, 0)

    run(with_harness(servers, _people, scenario))


def test_the_store_writes_roles_and_names_only_over_older_ones(servers: dict[str, Any]) -> None:
    """The guards themselves, on FerretDB: a replay or an older write changes nothing (`rolesUpdatedAt`, `nameUpdatedAt`)."""
    client: MongoClient[Document] = mongo_client(servers, retryWrites=False)
    db = client[f"chat_{unique_site()}"]
    try:
        ensure_indexes(db)
        db.rooms.insert_one({"_id": "r1", "name": "eng", "type": "channel", "siteId": "s1", "createdAt": TS, "updatedAt": TS})
        db.subscriptions.insert_many([
            {"_id": f"s-{a}", "u": {"_id": f"u-{a}", "account": a}, "roomId": "r1", "name": "eng", "roles": ["member"], "joinedAt": TS} for a in ("a", "b")
        ])
        store = RoomStore(db)
        store.set_roles("r1", SetRoles(account="a", roles=["member", "owner"], at=TS + 20))
        store.set_roles("r1", SetRoles(account="a", roles=["member"], at=TS + 10))  # older: ignored
        store.set_roles("r1", SetRoles(account="a", roles=["member"], at=TS + 20))  # same instant (a replay): ignored
        store.rename("r1", Rename(name="newer", at=TS + 20, updated_at=TS + 21))
        store.rename("r1", Rename(name="older", at=TS + 10, updated_at=TS + 22))
        subs = {d["u"]["account"]: d for d in db.subscriptions.find({"roomId": "r1"})}
        assert (subs["a"]["roles"], subs["a"]["rolesUpdatedAt"], subs["b"]["roles"]) == (["member", "owner"], TS + 20, ["member"])
        assert {a: (d["name"], d["nameUpdatedAt"]) for a, d in subs.items()} == {"a": ("newer", TS + 20), "b": ("newer", TS + 20)}
        room = db.rooms.find_one({"_id": "r1"})
        assert room is not None and (room["name"], room["nameUpdatedAt"], room["updatedAt"]) == ("newer", TS + 20, TS + 21)
    finally:
        client.drop_database(db.name)
        client.close()
