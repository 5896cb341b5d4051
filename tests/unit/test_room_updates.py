"""room_worker's role update, rename, add by channel and who may do what: the handler over an in-memory store.

The store keeps whole subscriptions and applies the guarded writes as store_mongo.py does (`rolesUpdatedAt`,
`nameUpdatedAt`), so a sequence of commands can be decided and applied one after the other.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import msgspec
import pytest

from dataflows.room_worker.commands import Command, parse_command
from dataflows.room_worker.handler import BatchReads, RoomHandler
from dataflows.room_worker.outcomes import Outcome, Rename, RoomWrites, SetRoles
from dataflows.room_worker.plans import channel_name_problem
from dataflows.room_worker.store import Member
from dataflows.room_worker.updates import roles_after
from schemas import names, streams, subjects
from schemas.carriers import Delivery
from schemas.documents import MemberType, Room, RoomMember, Subscription, User
from scripts.localservers.permissions import nats_service_permissions

SITE = "s1"
T0 = 1767225600000
ORG = MemberType.ORG.value
SUFFIX = {"create": "create", "add": "member.add", "remove": "member.remove", "role": "member.role-update", "rename": "rename"}


def _user(account: str, site: str = SITE, *, sect: str = "") -> User:
    return User(id=f"u-{account}", account=account, site_id=site, sect_id=sect)


PEOPLE = [
    _user("alice"), _user("bob"), _user("carol", "s2"), _user("dave", "s2", sect="org-sales"), _user("erin", "s3", sect="org-sales"),
    _user("frank"), _user("gina", sect="org-sales"), _user("sales.bot", sect="org-sales"), _user("helper.bot"),
]


class FullStore:
    """`Lookups` over whole documents; `apply` carries out an outcome's writes with the store's guards."""

    def __init__(self, users: list[User]) -> None:
        self.users = {u.account: u for u in users}
        self.rooms: dict[str, Room] = {}
        self.subs: dict[str, dict[str, Subscription]] = {}
        self.rows: dict[str, dict[tuple[str, str], RoomMember]] = {}

    def users_by_accounts(self, accounts: Any) -> dict[str, User]:
        return {a: self.users[a] for a in accounts if a in self.users}

    def org_members(self, orgs: Any) -> list[User]:
        return [u for u in self.users.values() if {u.sect_id, u.dept_id} & set(orgs)]

    def room(self, room_id: str) -> Room | None:
        return self.rooms.get(room_id)

    def members(self, room_id: str) -> dict[str, Member]:
        return {a: Member(user_id=s.u.id, is_bot=s.u.is_bot, roles=list(s.roles or [])) for a, s in self.subs.get(room_id, {}).items()}

    def room_orgs(self, room_id: str) -> set[str]:
        return {i for t, i in self.rows.get(room_id, {}) if t == ORG}

    def individual_ids(self, room_id: str) -> set[str]:
        return {i for t, i in self.rows.get(room_id, {}) if t != ORG}

    def subscription(self, room_id: str, account: str) -> Subscription | None:
        return self.subs.get(room_id, {}).get(account)

    def apply(self, outcome: Outcome) -> None:
        writes, rid = outcome.writes, outcome.room_id
        if writes.room is not None:
            self.rooms.setdefault(rid, writes.room)
        subs, rows = self.subs.setdefault(rid, {}), self.rows.setdefault(rid, {})
        for s in writes.subscriptions:
            subs.setdefault(s.u.account, s)
        for r in writes.room_members:
            rows.setdefault((r.member.type, r.member.id), r)
        for account in writes.unsubscribe:
            subs.pop(account, None)
        for key in writes.drop_rows:
            rows.pop((key.type, key.id), None)
        for change in writes.set_roles:
            sub = subs[change.account]
            if not isinstance(sub.roles_updated_at, int) or sub.roles_updated_at < change.at:
                subs[change.account] = msgspec.structs.replace(sub, roles=change.roles, roles_updated_at=change.at)
        if writes.rename is not None:
            at, room = writes.rename.at, self.rooms[rid]
            if not isinstance(room.name_updated_at, int) or room.name_updated_at < at:
                self.rooms[rid] = msgspec.structs.replace(room, name=writes.rename.name, name_updated_at=at)
            for account, sub in subs.items():
                if not isinstance(sub.name_updated_at, int) or sub.name_updated_at < at:
                    subs[account] = msgspec.structs.replace(sub, name=writes.rename.name, name_updated_at=at)


_seq = itertools.count(1)


def command(op: str, body: dict[str, Any], request_id: str = "") -> Command:
    seq = next(_seq)
    delivery = Delivery(
        subject=f"chat.room.canonical.{SITE}.{SUFFIX[op]}", data=json.dumps(body).encode(), reply=f"r{seq}", stream=f"ROOMS_{SITE}",
        stream_seq=seq, num_delivered=1, headers={"X-Request-ID": request_id} if request_id else None,
    )
    parsed = parse_command(delivery, site=SITE, mint_id=lambda: "minted", now_ms=T0)
    assert isinstance(parsed, Command), parsed
    return parsed


def decide(store: FullStore, op: str, body: dict[str, Any], *, now: int = T0, request_id: str = "") -> Outcome:
    ids = itertools.count(1)
    handler = RoomHandler(store, site=SITE, clock=lambda: now, new_id=lambda: f"id{next(ids)}")
    outcome = handler.decide(command(op, body, request_id), BatchReads())
    store.apply(outcome)
    return outcome


def channel(store: FullStore, room_id: str, *users: str, orgs: tuple[str, ...] = (), owner: str = "alice") -> FullStore:
    body = {"name": f"name of {room_id}", "users": list(users), "orgs": list(orgs), "roomId": room_id, "requesterAccount": owner, "timestamp": T0}
    assert decide(store, "create", body).ok
    return store


def role(account: str, new_role: str, ts: int, requester: str = "alice", room: str = "r-eng") -> dict[str, Any]:
    return {"roomId": room, "account": account, "newRole": new_role, "requesterId": f"u-{requester}", "requesterAccount": requester, "timestamp": ts}


def rename(name: str, ts: int, requester: str = "alice", room: str = "r-eng") -> dict[str, Any]:
    return {"roomId": room, "newName": name, "requesterAccount": requester, "timestamp": ts}


def refused(outcome: Outcome, code: str, error: str = "") -> None:
    assert not outcome.ok and outcome.result.code == code, outcome.result
    assert error in outcome.result.error
    assert (outcome.writes, outcome.publishes, outcome.notices) == (RoomWrites(), [], [])


def nothing(outcome: Outcome) -> None:
    assert outcome.ok and (outcome.writes, outcome.publishes, outcome.notices) == (RoomWrites(), [], [])


def inner(data: bytes) -> tuple[dict[str, Any], bytes]:
    envelope = json.loads(data)
    return envelope, base64.b64decode(envelope["payload"])


# --- pure rules


@pytest.mark.parametrize(
    ("current", "new_role", "expected"),
    [(["member"], "owner", ["member", "owner"]), (["owner"], "owner", ["owner"]), (["owner"], "member", ["member"]),
     (["member", "owner"], "member", ["member"]), ([], "member", ["member"]), (["member", "admin"], "owner", ["member", "admin", "owner"])],
    ids=["promote", "promote_owner", "demote_creator", "demote_promoted", "demote_bare", "other_roles_stay"],
)
def test_roles_after(current: list[str], new_role: str, expected: list[str]) -> None:
    assert roles_after(current, new_role) == expected


@pytest.mark.parametrize(("name", "ok"), [("eng", True), ("x" * 100, True), ("", False), ("   ", False), ("x" * 101, False)])
def test_channel_name_rule(name: str, ok: bool) -> None:
    assert (channel_name_problem(name) is None) is ok


# --- role update


def test_promote_of_a_remote_member_writes_guarded_roles_tells_its_site_and_the_member() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob", "carol")
    rid = "0195f0a2-0000-7000-8000-0000000000a1"
    outcome = decide(store, "role", role("carol", "owner", T0 + 10), now=T0 + 20, request_id=rid)
    assert outcome.ok and (outcome.result.operation, outcome.result.request_id) == ("room.member.role_update", rid)
    assert outcome.writes == RoomWrites(set_roles=[SetRoles(account="carol", roles=["member", "owner"], at=T0 + 10)])
    (event,) = outcome.publishes
    assert (event.subject, event.msg_id) == ("outbox.s1.to.s2.role_updated", f"{rid}:s2")
    envelope, payload = inner(event.data)
    assert (envelope["type"], envelope["siteId"], envelope["destSiteId"], envelope["timestamp"]) == ("role_updated", "s1", "s2", T0 + 20)
    expected = {"userId": "u-carol", "subscription": {"roomId": "r-eng", "u": {"account": "carol"}, "roles": ["member", "owner"]}, "action": "role_updated", "timestamp": T0 + 20}
    assert payload == json.dumps(expected, separators=(",", ":")).encode()
    (notice,) = outcome.notices
    assert notice.subject == "chat.user.carol.event.subscription.update"
    sub = store.subs["r-eng"]["carol"]
    assert json.loads(notice.data) == {
        "userId": "u-carol",
        "subscription": {
            "id": sub.id, "u": {"id": "u-carol", "account": "carol", "isBot": False}, "roomId": "r-eng", "siteId": "s1",
            "roles": ["member", "owner"], "name": "name of r-eng", "roomType": "channel", "joinedAt": T0,
        },
        "action": "role_updated", "roomName": "name of r-eng", "timestamp": T0 + 20,
    }
    assert (sub.roles, sub.roles_updated_at) == (["member", "owner"], T0 + 10)


def test_a_local_member_gets_the_notice_and_no_event() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob")
    outcome = decide(store, "role", role("bob", "owner", T0 + 10))
    assert outcome.ok and outcome.publishes == [] and [n.subject for n in outcome.notices] == ["chat.user.bob.event.subscription.update"]


def test_demote_keeps_member_and_the_last_owner_cannot_go() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob")
    refused(decide(store, "role", role("alice", "member", T0 + 5)), "conflict", "alice is the last owner of room r-eng")
    assert decide(store, "role", role("bob", "owner", T0 + 10)).ok
    demoted = decide(store, "role", role("alice", "member", T0 + 11))  # another owner now: she may step down
    assert demoted.writes.set_roles == [SetRoles(account="alice", roles=["member"], at=T0 + 11)]
    refused(decide(store, "role", role("bob", "member", T0 + 12, requester="bob")), "conflict", "last owner")
    assert {a: s.roles for a, s in store.subs["r-eng"].items()} == {"alice": ["member"], "bob": ["member", "owner"]}


def test_an_older_role_update_after_a_newer_one_changes_nothing() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob", "carol")
    assert decide(store, "role", role("carol", "owner", T0 + 20)).ok
    nothing(decide(store, "role", role("carol", "member", T0 + 10)))  # accepted before the promote, delivered after it
    nothing(decide(store, "role", role("bob", "owner", T0)))  # no newer than bob's membership
    assert (store.subs["r-eng"]["carol"].roles, store.subs["r-eng"]["bob"].roles) == (["member", "owner"], ["member"])


def test_role_update_refusals() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob", orgs=("org-sales",))
    refused(decide(store, "role", role("frank", "owner", T0 + 1)), "bad_request", "frank is not a member of room r-eng")
    refused(decide(store, "role", role("dave", "owner", T0 + 1)), "bad_request", "only individual members can be owners")
    refused(decide(store, "role", role("bob", "owner", T0 + 1, room="r-none")), "not_found", "room r-none not found")
    assert decide(store, "create", {"users": ["bob"], "roomId": "u-aliceu-bob", "requesterAccount": "alice", "timestamp": T0}).ok
    refused(decide(store, "role", role("bob", "owner", T0 + 1, room="u-aliceu-bob")), "bad_request", "only channels have roles")


# --- rename


def test_rename_updates_the_room_and_every_subscription_and_announces_every_site_with_members() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob", "carol", "dave", "erin")
    rid = "0195f0a2-0000-7000-8000-0000000000b1"
    outcome = decide(store, "rename", rename("platform", T0 + 10), now=T0 + 30, request_id=rid)
    assert outcome.ok and outcome.result.operation == "room.rename"
    assert outcome.writes == RoomWrites(rename=Rename(name="platform", at=T0 + 10, updated_at=T0 + 30))
    assert [(p.subject, p.msg_id) for p in outcome.publishes] == [
        ("chat.inbox.s1.room_renamed", f"{rid}:s1"), ("outbox.s1.to.s2.room_renamed", f"{rid}:s2"), ("outbox.s1.to.s3.room_renamed", f"{rid}:s3"),
    ]
    for published in outcome.publishes:
        envelope, payload = inner(published.data)
        assert (envelope["type"], envelope["timestamp"]) == ("room_renamed", T0 + 30)
        assert payload == b'{"roomId":"r-eng","newName":"platform","timestamp":%d}' % (T0 + 30)
    assert store.rooms["r-eng"].name == "platform"
    assert {s.name for s in store.subs["r-eng"].values()} == {"platform"}


def test_an_older_rename_after_a_newer_one_changes_nothing() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob")
    assert decide(store, "rename", rename("newer", T0 + 20)).publishes
    nothing(decide(store, "rename", rename("older", T0 + 10)))
    nothing(decide(store, "rename", rename("same instant", T0 + 20)))
    assert decide(store, "rename", rename("newer", T0 + 30)).publishes  # the same name again is still a newer rename
    assert (store.rooms["r-eng"].name, {s.name for s in store.subs["r-eng"].values()}) == ("newer", {"newer"})


@pytest.mark.parametrize(
    ("body", "code", "error"),
    [(rename("", T0 + 1), "bad_request", "a channel needs a name"), (rename("x" * 101, T0 + 1), "bad_request", "at most 100"),
     (rename("x", T0 + 1, requester="bob"), "forbidden", "bob is not an owner of room r-eng"),
     (rename("x", T0 + 1, requester="frank"), "forbidden", "frank is not an owner"),
     (rename("x", T0 + 1, room="u-aliceu-bob"), "bad_request", "only channels are renamed"), (rename("x", T0 + 1, room="r-x"), "not_found", "r-x")],
    ids=["blank", "too_long", "member", "outsider", "dm", "no_room"],
)
def test_rename_refusals(body: dict[str, Any], code: str, error: str) -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob")
    assert decide(store, "create", {"users": ["bob"], "roomId": "u-aliceu-bob", "requesterAccount": "alice", "timestamp": T0}).ok
    refused(decide(store, "rename", body), code, error)


# --- who may do what (docs/DESIGN.md): alice owns r-eng, bob is a member, frank is not in it


OWNER, MEMBER, OUTSIDER = "alice", "bob", "frank"


def _body(op: str, requester: str) -> dict[str, Any]:
    return {
        "add": {"roomId": "r-eng", "users": ["gina"], "requesterAccount": requester, "timestamp": T0 + 1},
        "remove": {"roomId": "r-eng", "requester": requester, "account": "carol", "timestamp": T0 + 1},
        "remove_org": {"roomId": "r-eng", "requester": requester, "orgId": "org-sales", "timestamp": T0 + 1},
        "role": role("carol", "owner", T0 + 1, requester=requester),
        "rename": rename("renamed", T0 + 1, requester=requester),
        "create": {"name": "mine", "users": ["carol"], "roomId": f"r-{requester}", "requesterAccount": requester, "timestamp": T0 + 1},
    }[op]


@pytest.mark.parametrize(
    ("op", "requester", "expected"),
    [
        ("create", OUTSIDER, "ok"),
        ("add", OWNER, "ok"), ("add", MEMBER, "ok"), ("add", OUTSIDER, "forbidden"),
        ("remove", OWNER, "ok"), ("remove", MEMBER, "forbidden"), ("remove", OUTSIDER, "forbidden"),
        ("remove_org", OWNER, "ok"), ("remove_org", MEMBER, "forbidden"), ("remove_org", OUTSIDER, "forbidden"),
        ("role", OWNER, "ok"), ("role", MEMBER, "forbidden"), ("role", OUTSIDER, "forbidden"),
        ("rename", OWNER, "ok"), ("rename", MEMBER, "forbidden"), ("rename", OUTSIDER, "forbidden"),
    ],
)
def test_who_may_do_what(op: str, requester: str, expected: str) -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob", "carol")
    outcome = decide(store, {"remove_org": "remove"}.get(op, op), _body(op, requester))
    assert (outcome.result.status if outcome.ok else outcome.result.code) == expected, outcome.result


def test_anyone_in_the_room_may_leave_but_not_its_last_owner_while_others_stay() -> None:
    store = channel(FullStore(PEOPLE), "r-eng", "bob")
    assert decide(store, "remove", {"roomId": "r-eng", "requester": "bob", "account": "bob", "timestamp": T0 + 1}).publishes
    outsider = decide(store, "remove", {"roomId": "r-eng", "requester": "frank", "account": "frank", "timestamp": T0 + 1})
    assert outsider.ok and (outsider.publishes, outsider.writes.unsubscribe) == ([], [])  # nothing to leave
    assert decide(store, "add", {"roomId": "r-eng", "users": ["carol"], "requesterAccount": "alice", "timestamp": T0 + 2}).ok
    leave = {"roomId": "r-eng", "requester": "alice", "account": "alice", "timestamp": T0 + 3}
    refused(decide(store, "remove", leave), "conflict", "alice is the last owner of room r-eng")
    assert decide(store, "remove", {"roomId": "r-eng", "requester": "alice", "account": "carol", "timestamp": T0 + 4}).ok
    assert decide(store, "remove", {**leave, "timestamp": T0 + 5}).writes.unsubscribe == ["alice"]  # the last one out


# --- add by channel


def _source(store: FullStore) -> FullStore:
    """r-src: alice, bob, carol, helper.bot on their own, org-sales (dave, erin; its bot stays out); gina joins org-sales later."""
    channel(store, "r-src", "bob", "carol", "helper.bot", orgs=("org-sales",))
    assert set(store.subs["r-src"]) == {"alice", "bob", "carol", "helper.bot", "dave", "erin", "gina"}
    del store.subs["r-src"]["gina"]  # an org member the channel never subscribed: still one of its members
    return store


def test_add_by_channel_adds_its_individuals_and_org_members_without_bots_once_each() -> None:
    store = channel(_source(FullStore(PEOPLE)), "r-tgt", "frank")
    add = {"roomId": "r-tgt", "users": ["bob"], "channels": [{"roomId": "r-src", "siteId": "s1"}, {"roomId": "r-src"}], "requesterAccount": "alice", "timestamp": T0 + 1}
    outcome = decide(store, "add", add, request_id="0195f0a2-0000-7000-8000-0000000000c1")
    assert outcome.ok
    assert [s.u.account for s in outcome.writes.subscriptions] == ["bob", "carol", "dave", "erin", "gina"]
    lanes = {p.subject: json.loads(inner(p.data)[1])["accounts"] for p in outcome.publishes}
    assert lanes == {
        "chat.inbox.s1.member_added": ["bob", "carol", "dave", "erin", "gina"],
        "outbox.s1.to.s2.member_added": ["carol", "dave"], "outbox.s1.to.s3.member_added": ["erin"],
    }
    assert set(store.subs["r-tgt"]) == {"alice", "frank", "bob", "carol", "dave", "erin", "gina"}


def test_create_with_a_channel_takes_its_members() -> None:
    store = _source(FullStore(PEOPLE))
    create = {"name": "copy", "users": ["frank"], "channels": [{"roomId": "r-src", "siteId": "s1"}], "roomId": "r-copy", "requesterAccount": "bob", "timestamp": T0 + 1}
    outcome = decide(store, "create", create)
    assert outcome.ok
    assert [(s.u.account, s.roles) for s in outcome.writes.subscriptions] == [
        ("bob", ["owner"]), ("frank", ["member"]), ("alice", ["member"]), ("carol", ["member"]), ("dave", ["member"]), ("erin", ["member"]), ("gina", ["member"]),
    ]


@pytest.mark.parametrize(
    ("ref", "requester", "code", "error"),
    [({"roomId": "r-src", "siteId": "s2"}, "alice", "bad_request", "channel r-src is homed on site s2"),
     ({"roomId": "r-none"}, "alice", "not_found", "channel r-none not found"),
     ({"roomId": "u-aliceu-bob"}, "alice", "bad_request", "room u-aliceu-bob is a dm"),
     ({"roomId": "r-src"}, "frank", "forbidden", "frank is not a member of channel r-src")],
    ids=["other_site", "missing", "not_a_channel", "requester_not_in_source"],
)
def test_add_by_channel_refusals(ref: dict[str, str], requester: str, code: str, error: str) -> None:
    store = channel(_source(FullStore(PEOPLE)), "r-tgt", "frank")
    assert decide(store, "create", {"users": ["bob"], "roomId": "u-aliceu-bob", "requesterAccount": "alice", "timestamp": T0}).ok
    add = {"roomId": "r-tgt", "channels": [ref], "requesterAccount": requester, "timestamp": T0 + 1}
    refused(decide(store, "add", add), code, error)
    create = {"name": "n", "channels": [ref], "roomId": "r-new", "requesterAccount": requester, "timestamp": T0 + 1}
    refused(decide(store, "create", create), code, error)


# --- the new events and the notice are carried


def _matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    if want[-1] == ">":
        return len(have) >= len(want) and all(w in ("*", h) for w, h in zip(want[:-1], have, strict=False))
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


@pytest.mark.parametrize("event_type", ["role_updated", "room_renamed"])
def test_streams_sources_durables_and_permissions_carry_the_new_events(event_type: str) -> None:
    home, dest = "s1", "s2"
    publish = nats_service_permissions(home)["publish"]["allow"]
    local, sent = subjects.inbox_local(home, event_type), subjects.outbox(origin=home, dest=dest, event_type=event_type)
    assert any(_matches(p, local) for p in publish) and any(_matches(p, sent) for p in publish)
    (home_inbox,) = [s for s in streams.site_streams(home, [home, dest]) if s.name == names.inbox_stream(home)]
    assert any(_matches(p, local) for p in home_inbox.subjects)
    (dest_inbox,) = [s for s in streams.site_streams(dest, [home, dest]) if s.name == names.inbox_stream(dest)]
    (source,) = dest_inbox.sources
    assert _matches(source.transform_src, sent) and source.transform_dest == subjects.inbox_aggregate_filter(dest)
    aggregate = subjects.inbox_aggregate(dest, event_type)
    durables = {c.durable: c.filter_subjects for c in streams.site_consumers(dest)}
    assert any(_matches(p, aggregate) for p in durables[names.INBOX_WORKER_DURABLE])
    search = durables[names.SEARCH_SYNC_DURABLE]
    if event_type == "room_renamed":  # search_sync keeps room names on both lanes; roles are not its business
        assert {subjects.inbox_local(dest, event_type), aggregate} <= set(search)
    assert any(_matches(p, subjects.subscription_update("carol")) for p in publish)
