"""room_worker's decisions (handler.py) over an in-memory store: the outcome's writes, events and result.

Where a shared Go vector describes the command, the events must be its exact bytes. One file over 300 lines:
every case runs over the same in-memory store.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dataflows.room_worker.commands import Command, parse_command
from dataflows.room_worker.handler import BatchReads, RoomHandler, looked_up
from dataflows.room_worker.outcomes import Outcome, RoomMemberKey, RoomWrites
from dataflows.room_worker.plans import room_counts
from dataflows.room_worker.store import Member
from schemas.carriers import Delivery
from schemas.documents import MemberType, Room, RoomMember, User

VECTORS = Path(__file__).parents[3] / "shared" / "vectors"
SITE = "s1"
T0 = 1767225600000
INDIVIDUAL, ORG = MemberType.INDIVIDUAL.value, MemberType.ORG.value


def _user(account: str, site: str = SITE, *, sect: str = "", uid: str = "") -> User:
    return User(id=uid or f"u-{account}-id", account=account, site_id=site, sect_id=sect)


PEOPLE = [
    _user("alice"), _user("bob"), _user("carol", "s2"), _user("dave", "s2", sect="org-sales"), _user("erin", "s2", sect="org-sales"),
    _user("sales.bot", sect="org-sales"), _user("helper.bot", uid="u-helper-id"),
]


class MemoryStore:
    """The handler's `Lookups` over plain dicts, plus `apply` to carry an outcome's writes out; records each read."""

    def __init__(self, users: list[User]) -> None:
        self.users = {u.account: u for u in users}
        self.rooms: dict[str, Room] = {}
        self.subs: dict[str, dict[str, Member]] = {}
        self.rows: dict[str, dict[tuple[str, str], RoomMember]] = {}
        self.reads: list[str] = []

    def users_by_accounts(self, accounts: Any) -> dict[str, User]:
        self.reads.append("users")
        return {a: self.users[a] for a in accounts if a in self.users}

    def org_members(self, orgs: Any) -> list[User]:
        self.reads.append("org_members")
        return [u for u in self.users.values() if {u.sect_id, u.dept_id} & set(orgs)]

    def room(self, room_id: str) -> Room | None:
        self.reads.append("room")
        return self.rooms.get(room_id)

    def members(self, room_id: str) -> dict[str, Member]:
        self.reads.append("members")
        return dict(self.subs.get(room_id, {}))

    def room_orgs(self, room_id: str) -> set[str]:
        self.reads.append("room_orgs")
        return {i for t, i in self.rows.get(room_id, {}) if t == ORG}

    def individual_ids(self, room_id: str) -> set[str]:
        self.reads.append("individual_ids")
        return {i for t, i in self.rows.get(room_id, {}) if t == INDIVIDUAL}

    def apply(self, outcome: Outcome) -> None:
        writes, rid = outcome.writes, outcome.room_id
        if writes.room is not None:
            self.rooms.setdefault(rid, writes.room)
        subs, rows = self.subs.setdefault(rid, {}), self.rows.setdefault(rid, {})
        for s in writes.subscriptions:
            subs.setdefault(s.u.account, Member(user_id=s.u.id, is_bot=s.u.is_bot, roles=list(s.roles or [])))
        for r in writes.room_members:
            rows.setdefault((r.member.type, r.member.id), r)
        for account in writes.unsubscribe:
            subs.pop(account, None)
        for key in writes.drop_rows:
            rows.pop((key.type, key.id), None)
        for account in writes.drop_owner:
            subs[account] = msgspec.structs.replace(subs[account], roles=[r for r in subs[account].roles if r != "owner"])
        if writes.counts is not None:
            self.rooms[rid] = msgspec.structs.replace(self.rooms[rid], user_count=writes.counts[0], app_count=writes.counts[1])


_SUFFIX = {"create": "create", "add": "member.add", "remove": "member.remove"}
_seq = itertools.count(1)


def command(op: str, body: dict[str, Any], request_id: str = "") -> Command:
    seq = next(_seq)
    delivery = Delivery(
        subject=f"chat.room.canonical.{SITE}.{_SUFFIX[op]}", data=json.dumps(body).encode(), reply=f"r{seq}", stream=f"ROOMS_{SITE}",
        stream_seq=seq, num_delivered=1, headers={"X-Request-ID": request_id} if request_id else None,
    )
    parsed = parse_command(delivery, site=SITE, mint_id=lambda: "minted", now_ms=T0)
    assert isinstance(parsed, Command), parsed
    return parsed


def handler(store: MemoryStore, now: int = T0) -> RoomHandler:
    ids = itertools.count(1)
    return RoomHandler(store, site=SITE, clock=lambda: now, new_id=lambda: f"id{next(ids)}")


def decide(store: MemoryStore, op: str, body: dict[str, Any], *, now: int = T0, request_id: str = "", apply: bool = True) -> Outcome:
    outcome = handler(store, now).decide(command(op, body, request_id), BatchReads())
    if apply:
        store.apply(outcome)
    return outcome


def eng(store: MemoryStore, *others: str) -> MemoryStore:
    """r-eng (`eng-platform`) created by alice with `others` in it."""
    create = {"name": "eng-platform", "users": list(others), "roomId": "r-eng", "requesterAccount": "alice", "timestamp": T0}
    assert decide(store, "create", create).ok
    return store


def _vector(name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return found


def _matches(outcome: Outcome, *vectors: str) -> None:
    for name in vectors:
        vector = _vector(name)
        (published,) = [p for p in outcome.publishes if p.subject == vector["subject"]]
        assert (published.msg_id, published.data) == (vector["headers"]["Nats-Msg-Id"], vector["data"].encode()), name


def _ok(outcome: Outcome, request_id: str, operation: str, now: int) -> None:
    assert outcome.ok and outcome.reason == ""
    result = outcome.result
    assert (result.request_id, result.operation, result.status, result.room_id, result.timestamp) == (request_id, operation, "ok", outcome.room_id, now)


def _failed(outcome: Outcome, code: str, error: str) -> None:
    assert not outcome.ok and outcome.reason == f"{code}: {error}"
    assert (outcome.result.status, outcome.result.code, outcome.result.error) == ("error", code, error)
    assert (outcome.writes, outcome.publishes) == (RoomWrites(), [])


def test_create_channel_writes_room_members_and_publishes_the_vectors() -> None:
    rid = "0195f0a2-7c1d-7e3a-9b41-5d2c8e6f1a20"
    body = {"name": "eng-platform", "users": ["bob", "carol"], "roomId": "r-eng", "requesterAccount": "alice", "timestamp": T0}
    outcome = decide(MemoryStore(PEOPLE), "create", body, now=T0 + 123, request_id=rid)
    _ok(outcome, rid, "room.create", T0 + 123)
    _matches(outcome, "01_create_channel_local_lane", "02_create_channel_outbox_to_s2")
    assert len(outcome.publishes) == 2
    room = outcome.writes.room
    assert room is not None and (room.id, room.type, room.site_id, room.user_count, room.app_count, room.updated_at) == ("r-eng", "channel", SITE, 3, 0, T0 + 123)
    assert [(s.u.account, s.roles) for s in outcome.writes.subscriptions] == [("alice", ["owner"]), ("bob", ["member"]), ("carol", ["member"])]
    assert outcome.writes.room_members == []  # no orgs: membership needs no explanation
    assert (outcome.request_key, outcome.requester) == (rid, "alice")


@pytest.mark.parametrize(
    ("other", "room_id", "vector", "now"),
    [("carol", "u-alice-idu-carol-id", "03_create_dm_outbox_to_s2", 1767225700050), ("helper.bot", "u-alice-idu-helper-id", "04_create_botdm_local_lane", 1767225800010)],
)
def test_create_dm_and_botdm_publish_the_vectors(other: str, room_id: str, vector: str, now: int) -> None:
    request_id = _vector(vector)["headers"]["Nats-Msg-Id"].split(":")[0]
    body = {"users": [other], "roomId": room_id, "requesterAccount": "alice", "timestamp": _vector(vector)["inner"]["joinedAt"]}
    outcome = decide(MemoryStore(PEOPLE), "create", body, now=now, request_id=request_id)
    _ok(outcome, request_id, "room.create", now)
    _matches(outcome, vector)
    room = outcome.writes.room
    assert room is not None and (room.type, room.name, (room.user_count, room.app_count)) == (_vector(vector)["inner"]["roomType"], "", room_counts({"alice": False, other: other.endswith(".bot")}))
    assert [s.roles for s in outcome.writes.subscriptions] == [None, None]


def test_create_over_an_existing_channel_id_is_a_conflict() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    again = {"name": "other", "users": ["carol"], "roomId": "r-eng", "requesterAccount": "bob", "timestamp": T0 + 1}
    _failed(decide(store, "create", again), "conflict", "room r-eng exists already")


def test_create_of_a_dm_whose_id_is_taken_by_a_channel_is_a_conflict() -> None:
    store = MemoryStore(PEOPLE)
    store.rooms["u-alice-idu-bob-id"] = Room(id="u-alice-idu-bob-id", name="x", type="channel", site_id=SITE, created_at=1, updated_at=1)
    body = {"users": ["bob"], "roomId": "u-alice-idu-bob-id", "requesterAccount": "alice", "timestamp": T0}
    _failed(decide(store, "create", body), "conflict", "room u-alice-idu-bob-id exists as a channel of site s1")


def test_an_existing_dm_is_ok_without_writes_or_events() -> None:
    store = MemoryStore(PEOPLE)
    assert decide(store, "create", {"users": ["bob"], "roomId": "u-alice-idu-bob-id", "requesterAccount": "alice", "timestamp": T0}).publishes
    outcome = decide(store, "create", {"users": ["alice"], "roomId": "u-alice-idu-bob-id", "requesterAccount": "bob", "timestamp": T0 + 5})
    _ok(outcome, "minted", "room.create", T0)
    assert (outcome.writes, outcome.publishes) == (RoomWrites(), [])


def test_add_with_history_none_publishes_the_vector() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    request_id = "0195f0a2-0000-7000-8000-000000000005"
    add = {"roomId": "r-eng", "users": ["dave", "erin"], "history": {"mode": "none"}, "requesterAccount": "alice", "timestamp": 1767226000000}
    outcome = decide(store, "add", add, now=1767226000200, request_id=request_id)
    _ok(outcome, request_id, "room.member.add", 1767226000200)
    _matches(outcome, "05_add_members_history_none_outbox")
    assert [(s.u.account, s.history_shared_since) for s in outcome.writes.subscriptions] == [("dave", 1767226000000), ("erin", 1767226000000)]
    assert outcome.writes.counts == (4, 0)


def test_add_by_org_brings_its_humans_and_explains_everyone() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    outcome = decide(store, "add", {"roomId": "r-eng", "orgs": ["org-sales"], "requesterAccount": "alice", "timestamp": T0 + 1})
    assert outcome.ok
    assert [s.u.account for s in outcome.writes.subscriptions] == ["dave", "erin"]  # the org's bot stays out
    assert sorted((r.member.type, r.member.account or r.member.id) for r in outcome.writes.room_members) == [
        (INDIVIDUAL, "alice"), (INDIVIDUAL, "bob"), (ORG, "org-sales")  # first org: those already in are there on their own
    ]
    assert outcome.writes.counts == (4, 0)
    assert [json.loads(p.data)["type"] for p in outcome.publishes] == ["member_added", "member_added"]  # local lane, s2's outbox


def test_adding_members_already_in_changes_nothing_but_answers_ok() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    outcome = decide(store, "add", {"roomId": "r-eng", "users": ["bob"], "requesterAccount": "alice", "timestamp": T0 + 1})
    assert outcome.ok and (outcome.writes, outcome.publishes) == (RoomWrites(), [])


def test_owner_removes_one_member() -> None:
    store = eng(MemoryStore(PEOPLE), "bob", "carol")
    outcome = decide(store, "remove", {"roomId": "r-eng", "requester": "alice", "account": "carol", "timestamp": T0 + 1})
    _ok(outcome, "minted", "room.member.remove", T0)
    row = RoomMemberKey(type=INDIVIDUAL, id="u-carol-id")
    assert outcome.writes == RoomWrites(unsubscribe=["carol"], drop_rows=[row], counts=(2, 0))
    assert [(p.subject, json.loads(p.data)["type"]) for p in outcome.publishes] == [("chat.inbox.s1.member_removed", "member_removed"), ("outbox.s1.to.s2.member_removed", "member_removed")]


def test_self_leave_publishes_the_vector() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    request_id = "0195f0a2-0000-7000-8000-000000000006"
    outcome = decide(store, "remove", {"roomId": "r-eng", "requester": "bob", "account": "bob", "timestamp": T0 + 1}, now=1767226100000, request_id=request_id)
    _ok(outcome, request_id, "room.member.remove", 1767226100000)
    _matches(outcome, "06_self_leave_local_lane")
    assert store.subs["r-eng"].keys() == {"alice"}


def test_removing_a_member_still_in_through_an_org_only_drops_the_individual_standing() -> None:
    store = eng(MemoryStore(PEOPLE), "dave")
    assert decide(store, "add", {"roomId": "r-eng", "orgs": ["org-sales"], "requesterAccount": "alice", "timestamp": T0 + 1}).ok
    outcome = decide(store, "remove", {"roomId": "r-eng", "requester": "alice", "account": "dave", "timestamp": T0 + 2})
    assert outcome.ok and outcome.publishes == []
    assert outcome.writes == RoomWrites(drop_rows=[RoomMemberKey(type=INDIVIDUAL, id="u-dave-id")], drop_owner=["dave"])


def test_remove_org_takes_out_its_members_and_publishes_the_vector() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    assert decide(store, "add", {"roomId": "r-eng", "orgs": ["org-sales"], "requesterAccount": "alice", "timestamp": T0 + 1}).ok
    request_id = "0195f0a2-0000-7000-8000-000000000007"
    remove = {"roomId": "r-eng", "requester": "alice", "orgId": "org-sales", "timestamp": T0 + 2}
    outcome = decide(store, "remove", remove, now=1767226200000, request_id=request_id)
    _ok(outcome, request_id, "room.member.remove_org", 1767226200000)
    _matches(outcome, "07_remove_org_outbox")
    assert outcome.writes == RoomWrites(unsubscribe=["dave", "erin"], drop_rows=[RoomMemberKey(type=ORG, id="org-sales")], counts=(2, 0))
    assert store.subs["r-eng"].keys() == {"alice", "bob"}


@pytest.mark.parametrize(
    ("op", "body", "error"),
    [
        ("create", {"name": "x", "users": ["bob"], "roomId": "r-x", "requesterAccount": "zoe", "timestamp": T0}, "requester zoe not found"),
        ("create", {"name": "x", "users": ["zoe"], "roomId": "r-x", "requesterAccount": "alice", "timestamp": T0}, "user zoe not found"),
        ("add", {"roomId": "r-x", "users": ["bob"], "requesterAccount": "alice", "timestamp": T0}, "room r-x not found"),
        ("add", {"roomId": "r-eng", "users": ["zoe"], "requesterAccount": "alice", "timestamp": T0}, "user zoe not found"),
        ("remove", {"roomId": "r-eng", "requester": "alice", "account": "zoe", "timestamp": T0}, "user zoe not found"),
        ("remove", {"roomId": "r-x", "requester": "alice", "orgId": "org-sales", "timestamp": T0}, "room r-x not found"),
    ],
)
def test_what_is_not_there_is_not_found(op: str, body: dict[str, Any], error: str) -> None:
    _failed(decide(eng(MemoryStore(PEOPLE), "bob"), op, body), "not_found", error)


@pytest.mark.parametrize(
    "body",
    [
        {"roomId": "r-eng", "requester": "bob", "account": "carol", "timestamp": T0 + 1},
        {"roomId": "r-eng", "requester": "bob", "orgId": "org-sales", "timestamp": T0 + 1},
        {"roomId": "r-eng", "requester": "dave", "account": "carol", "timestamp": T0 + 1},  # not even a member
    ],
)
def test_only_an_owner_removes_others(body: dict[str, Any]) -> None:
    _failed(decide(eng(MemoryStore(PEOPLE), "bob", "carol"), "remove", body), "forbidden", f"{body['requester']} is not an owner of room r-eng")


def test_members_change_in_channels_only() -> None:
    store = MemoryStore(PEOPLE)
    assert decide(store, "create", {"users": ["bob"], "roomId": "u-alice-idu-bob-id", "requesterAccount": "alice", "timestamp": T0}).ok
    add = {"roomId": "u-alice-idu-bob-id", "users": ["carol"], "requesterAccount": "alice", "timestamp": T0 + 1}
    _failed(decide(store, "add", add), "bad_request", "only channels change members, room u-alice-idu-bob-id is a dm")


def test_a_batch_prefetch_serves_the_first_command_of_a_room_and_later_ones_read_the_store() -> None:
    store = eng(MemoryStore(PEOPLE), "bob")
    first = command("add", {"roomId": "r-eng", "users": ["carol"], "requesterAccount": "alice", "timestamp": T0 + 1})
    second = command("remove", {"roomId": "r-eng", "requester": "alice", "account": "carol", "timestamp": T0 + 2})
    accounts, orgs = looked_up([first, second])
    assert (accounts, orgs) == ({"alice", "carol"}, set())
    reads = BatchReads(
        users=store.users_by_accounts(accounts), org_users=store.org_members(orgs), orgs=frozenset(orgs),
        rooms={"r-eng": store.rooms["r-eng"]}, members={"r-eng": store.members("r-eng")}, room_orgs={"r-eng": set()},
    )
    store.reads.clear()
    decider = handler(store)
    added = decider.decide(first, reads)
    assert added.ok and store.reads == []  # everything from the batch's reads
    store.apply(added)
    removed = decider.decide(second, reads)
    assert removed.writes.unsubscribe == ["carol"]  # it saw the add: the room's state came from the store this time
    assert store.reads == ["room", "members", "room_orgs"]
