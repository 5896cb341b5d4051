"""inbox_mirror against real NATS and MongoDB: lane filter, insert-only adds, guarded updates, dead-lettering."""

from __future__ import annotations

import socket
import urllib.request
import uuid
from typing import Any

from dataflows.inbox_mirror.writer import (
    GUARDS,
    REGISTER_HORIZON_MS,
    ROOM_NAMES,
    purge_registers,
)
from schemas import carriers, names, subjects
from testkit.mirror_site import add, mirror_site, remove, rename, roles
from testkit.support import wait_for


def test_local_lane_is_never_delivered_to_inbox_worker(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as s:
        s.users(["alice", "bob"])
        local = s.envelope(add("r1", ["alice"], 10))
        sourced = s.envelope(add("r1", ["bob"], 11))

        async def publish() -> None:
            await s.js.publish(subjects.inbox_local(s.site, "member_added"), local, headers={"Nats-Msg-Id": uuid.uuid4().hex})
            # through the peer's OUTBOX and the INBOX source, as in production
            await s.js.publish(subjects.outbox(origin=s.other, dest=s.site, event_type="member_added"), sourced, headers={"Nats-Msg-Id": uuid.uuid4().hex})

        s.run(publish())

        async def both_stored() -> bool:
            return (await s.js.stream_info(names.inbox_stream(s.site))).state.messages == 2

        s.run(wait_for(both_stored, what="both events in INBOX"))
        assert s.run(s.js.consumer_info(names.inbox_stream(s.site), names.INBOX_WORKER_DURABLE)).num_pending == 1
        with s.flow() as flow:
            s.run(wait_for(lambda: s.present() == {("r1", "bob")}, what="bob's mirrored subscription"))
            s.drained()
            flow.assert_alive()
        info = s.run(s.js.consumer_info(names.inbox_stream(s.site), names.INBOX_WORKER_DURABLE))
        assert info.delivered.stream_seq == 2 and info.num_redelivered == 0
        assert s.present() == {("r1", "bob")}


def test_redelivered_add_leaves_existing_subscription_untouched(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as s, s.flow() as flow:
        s.users(["alice", "bob"])
        s.publish([add("r1", ["alice"], 100)])
        s.drained()
        (first,) = s.subs()
        s.db.subscriptions.update_one({"_id": first["_id"]}, {"$set": {"lastSeenAt": 555, "alert": True}})
        s.publish([add("r1", ["alice", "bob"], 100)])  # the same event again, now also listing bob
        s.drained()
        flow.assert_alive()
        subs = {d["u"]["account"]: d for d in s.subs()}
        assert sorted(subs) == ["alice", "bob"]
        assert subs["alice"]["_id"] == first["_id"] and subs["alice"]["lastSeenAt"] == 555 and subs["alice"]["alert"] is True
        assert subs["bob"]["u"]["_id"] == "u-bob" and len(subs["bob"]["_id"]) == 32
        assert s.db.subscriptions.count_documents({}) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_removes_roles_renames_are_guarded_and_unknown_types_counted(servers: dict[str, Any]) -> None:
    port = _free_port()
    with mirror_site(servers) as s, s.flow(CHATFED_METRICS_PORT=str(port)) as flow:
        s.users(["a", "b", "c", "d", "e"])
        s.publish([add("r1", ["a", "b", "c"], 10, name="old", joined_at=10), add("dm1", ["e"], 10, name="", room_type="dm", requester="z")])
        s.drained()
        s.publish([
            roles("r1", "a", ["owner"], 20),
            roles("r1", "a", ["member", "x"], 18),  # older: loses
            rename("r1", "new", 30),
            rename("r1", "older", 25),  # older: loses
            rename("dm1", "not-a-channel", 30),
            remove("r1", ["b"], 40, inner="member_left"),
            remove("r1", ["c"], 40, org="org-1"),
            add("r1", ["b"], 35, name="old"),  # stale add after its remove: must not resurrect
            add("r1", ["d"], 12, name="old", joined_at=12),  # late add from before the rename: gets the new name
        ])
        s.publish([("room_sync", roles("r1", "a", ["y"], 99)[1], 99)])  # unknown type: acked, nothing written
        s.drained()
        flow.assert_alive()
        subs = {d["u"]["account"]: d for d in s.subs()}
        assert sorted(subs) == ["a", "d", "e"]
        assert (subs["a"]["roles"], subs["a"]["rolesUpdatedAt"], subs["a"]["name"], subs["a"]["nameUpdatedAt"]) == (["owner"], 20, "new", 30)
        assert (subs["d"]["roles"], subs["d"]["name"]) == (["member"], "new")
        assert (subs["e"]["name"], subs["e"]["roles"], "nameUpdatedAt" in subs["e"]) == ("z", None, False)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'chatfed_ignored_events_total{flow="inbox_mirror"} 1.0' in text
        assert 'chatfed_events_total{flow="inbox_mirror",outcome="ack"} 12.0' in text


def test_unknown_account_is_dead_lettered_with_its_reason_and_flow_keeps_going(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as s, s.flow(CHATFED_MAX_DELIVER="3", CHATFED_BACKOFF_BASE_MS="50", CHATFED_BACKOFF_MAX_MS="100") as flow:
        s.users(["alice", "bob"])
        s.publish([add("r1", ["alice", "ghost"], 10)])
        s.publish([add("r2", ["bob"], 11)])

        (dead,) = s.dead_letters(1)
        assert dead.subject == subjects.dlq(s.site, "inbox_mirror")
        assert dead.headers[carriers.DLQ_REASON] == "unknown account 'ghost' on this site"
        assert dead.headers[carriers.DLQ_DELIVERIES] == "3"
        assert dead.headers[carriers.DLQ_SUBJECT] == subjects.inbox_aggregate(s.site, "member_added")
        s.drained()
        flow.assert_alive()
        assert s.present() == {("r1", "alice"), ("r2", "bob")}


def test_purge_drops_only_registers_past_the_horizon(servers: dict[str, Any]) -> None:
    with mirror_site(servers) as s:
        now = 10 * REGISTER_HORIZON_MS
        for name in (GUARDS, ROOM_NAMES):
            s.db[name].insert_many([{"_id": "old", "ts": now - REGISTER_HORIZON_MS - 1}, {"_id": "young", "ts": now - REGISTER_HORIZON_MS + 1}])
        assert purge_registers(s.db, now) == 2
        assert [d["_id"] for d in s.db[GUARDS].find()] == ["young"] and [d["_id"] for d in s.db[ROOM_NAMES].find()] == ["young"]


def test_event_claiming_another_origin_is_dead_lettered_and_never_applied(servers: dict[str, Any]) -> None:
    """Issue 7: an event on OUTBOX_{s3} addressed to s2 that claims siteId s1 ends in DLQ_s2, nothing written."""
    with mirror_site(servers, third=True) as s, s.flow() as flow:  # s.site = s2, s.other = s1, s.third = s3
        s.users(["alice", "bob", "carol"])
        forged = s.envelope(add("r-forged", ["alice"], 10), origin=s.other)  # envelope and room claim s1
        s.publish_raw(subjects.outbox(origin=s.third, dest=s.site, event_type="member_added"), forged)
        bad_id = s.envelope(add("r-bad", ["bob.x"], 11))  # proven origin, but an account that is not one token
        s.publish_raw(subjects.outbox(origin=s.other, dest=s.site, event_type="member_added"), bad_id)
        s.publish([add("r-ok", ["carol"], 12)])  # a valid event after them is still applied
        s.drained()
        flow.assert_alive()
        first, second = sorted(s.dead_letters(2), key=lambda d: int(d.headers[carriers.DLQ_SEQUENCE]))
        assert first.headers[carriers.DLQ_REASON] == (
            f"origin mismatch: envelope claims siteId {s.other!r} but was sourced from OUTBOX_{s.third}"
        )
        assert first.headers[carriers.DLQ_STREAM_SOURCE].split(" ")[0].split(":")[0] == f"OUTBOX_{s.third}"
        assert first.data == forged
        assert second.headers[carriers.DLQ_REASON].startswith("invalid account 'bob.x'")
        assert s.present() == {("r-ok", "carol")}
        assert s.db.membership_guards.count_documents({"roomId": {"$in": ["r-forged", "r-bad"]}}) == 0
