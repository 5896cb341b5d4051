"""Planning room commands: the room-type rule, subscriptions per room type, add and remove membership rules."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dataflows.room_worker.plans import (
    AddPlan,
    CreatePlan,
    Failure,
    RemovePlan,
    plan_add,
    plan_create,
    plan_remove_one,
    plan_remove_org,
    room_type_of,
)
from schemas.commands import AddMembers, CreateRoom, History, RemoveMember
from schemas.documents import Room, User

USERS = {
    a: User(id=f"u-{a}", account=a, site_id=s, sect_id=sect, dept_id=dept)
    for a, s, sect, dept in [
        ("alice", "s1", "", ""),
        ("bob", "s1", "", ""),
        ("carol", "s2", "", ""),
        ("dave", "s2", "org-sales", ""),
        ("erin", "s1", "", "org-sales"),
        ("sales.bot", "s1", "org-sales", ""),
        ("helper.bot", "s2", "", ""),
    ]
}
SALES = [u for u in USERS.values() if "org-sales" in (u.sect_id, u.dept_id)]
CHANNEL = Room(id="r1", name="eng", type="channel", site_id="s1", created_at=1, updated_at=1)


def _ids() -> Any:
    counter = itertools.count()
    return lambda: f"id{next(counter)}"


@pytest.mark.parametrize(
    ("name", "users", "orgs", "expected"),
    [("", ["bob"], [], "dm"), ("", ["helper.bot"], [], "botDM"), ("", ["p_helper"], [], "botDM"), ("eng", ["bob"], [], "channel"),
     ("", ["bob", "carol"], [], "channel"), ("", ["bob"], ["org"], "channel"), ("", [], ["org"], "channel")],
    ids=["dm", "bot_suffix", "bot_prefix", "named", "two_users", "with_org", "org_only"],
)
def test_room_type_rule(name: str, users: list[str], orgs: list[str], expected: str) -> None:
    assert room_type_of(CreateRoom(name=name, users=users, orgs=orgs, room_id="r", requester_account="alice", timestamp=1)) == expected


def _create(**kw: Any) -> CreatePlan | Failure:
    body = CreateRoom(**{"name": "eng", "users": ["bob", "carol"], "room_id": "r1", "requester_account": "alice", "timestamp": 7, **kw})
    return plan_create(body, home="s1", requester=USERS["alice"], found=USERS, org_members=SALES, new_id=_ids())


def test_create_channel_owner_members_org_expansion_without_bots() -> None:
    plan = _create(orgs=["org-sales"])
    assert isinstance(plan, CreatePlan)
    assert [m.account for m in plan.members] == ["alice", "bob", "carol", "dave", "erin"]
    assert [(s.u.account, s.roles, s.name, s.is_subscribed, s.joined_at) for s in plan.subscriptions][:2] == [
        ("alice", ["owner"], "eng", False, 7), ("bob", ["member"], "eng", False, 7)]
    assert {(r.member.type, r.member.id) for r in plan.room_members} == {
        ("individual", "u-alice"), ("individual", "u-bob"), ("individual", "u-carol"), ("org", "org-sales")}
    assert (plan.room.type, plan.room.name, plan.room.site_id, plan.room.created_at) == ("channel", "eng", "s1", 7)


def test_create_without_orgs_writes_no_room_members() -> None:
    plan = _create()
    assert isinstance(plan, CreatePlan) and plan.room_members == []


@pytest.mark.parametrize(
    ("other", "room_id", "shape"),
    [("carol", "u-aliceu-carol", {"alice": ("carol", None, False), "carol": ("alice", None, False)}),
     ("helper.bot", "u-aliceu-helper.bot", {"alice": ("helper.bot", None, True), "helper.bot": ("alice", None, False)})],
    ids=["dm", "botDM"],
)
def test_direct_rooms_name_each_side_after_the_other(other: str, room_id: str, shape: dict[str, Any]) -> None:
    plan = _create(name="", users=[other], room_id=room_id)
    assert isinstance(plan, CreatePlan)
    assert {s.u.account: (s.name, s.roles, s.is_subscribed) for s in plan.subscriptions} == shape
    assert plan.room.name == ""


@pytest.mark.parametrize(
    ("kw", "code"),
    [({"users": ["bob", "nobody"]}, "not_found"), ({"name": "", "users": ["carol"], "room_id": "wrong"}, "bad_request"),
     ({"name": "", "users": ["alice"], "room_id": "u-aliceu-alice"}, "bad_request"),
     ({"name": "  "}, "bad_request"), ({"name": "x" * 101}, "bad_request")],
    ids=["unknown_user", "dm_id_mismatch", "self_dm", "blank_channel_name", "channel_name_too_long"],
)
def test_create_failures(kw: dict[str, Any], code: str) -> None:
    plan = _create(**kw)
    assert isinstance(plan, Failure) and plan.code.value == code


def _add(room: Room | None = CHANNEL, subscribers: dict[str, str] | None = None, room_orgs: set[str] | None = None, **kw: Any) -> AddPlan | Failure:
    body = AddMembers(**{"room_id": "r1", "users": ["bob", "carol"], "requester_account": "alice", "timestamp": 9, **kw})
    return plan_add(
        body, home="s1", room=room, requester=USERS["alice"], found=USERS, org_members=SALES if body.orgs else [],
        subscribers={"alice": "u-alice", "bob": "u-bob"} if subscribers is None else subscribers,
        room_orgs=room_orgs or set(), new_id=_ids(),
    )


def test_add_announces_only_new_members() -> None:
    plan = _add(orgs=["org-sales"], history=History(mode="none"))
    assert isinstance(plan, AddPlan)
    assert plan.new_accounts == ["carol", "dave", "erin"]
    rows = {(r.member.type, r.member.id) for r in plan.room_members}
    # first org: requested users, the org, and a backfill of who was already in
    assert rows == {("individual", "u-bob"), ("individual", "u-carol"), ("org", "org-sales"), ("individual", "u-alice")}


def test_adding_existing_members_only_is_empty() -> None:
    plan = _add(users=["bob"])
    assert isinstance(plan, AddPlan) and plan.new_accounts == [] and plan.room_members == []


@pytest.mark.parametrize(
    ("room", "kw", "code"),
    [(None, {}, "not_found"), (Room(id="r1", name="", type="dm", site_id="s1", created_at=1, updated_at=1), {}, "bad_request"),
     (CHANNEL, {"users": ["nobody"]}, "not_found"), (Room(id="r1", name="x", type="channel", site_id="s9", created_at=1, updated_at=1), {}, "conflict")],
    ids=["no_room", "dm", "unknown_user", "foreign_room"],
)
def test_add_failures(room: Room | None, kw: dict[str, Any], code: str) -> None:
    plan = _add(room=room, **kw)
    assert isinstance(plan, Failure) and plan.code.value == code


def _remove_one(account: str, requester: str, roles: list[str] | None, *, is_member: bool = True, room_orgs: set[str] | None = None) -> RemovePlan | Failure:
    body = RemoveMember(room_id="r1", requester=requester, account=account, timestamp=3)
    return plan_remove_one(body, home="s1", room=CHANNEL, user=USERS.get(account), is_member=is_member, requester_roles=roles, room_orgs=room_orgs or set())


@pytest.mark.parametrize(
    ("account", "requester", "roles", "is_member", "orgs", "expected"),
    [("bob", "bob", ["member"], True, set(), ("member_left", ["bob"], False)),
     ("bob", "alice", ["owner"], True, set(), ("member_removed", ["bob"], False)),
     ("bob", "alice", ["owner"], False, set(), ("member_removed", [], False)),
     ("erin", "alice", ["owner"], True, {"org-sales"}, ("member_removed", [], True)),
     ("bob", "carol", ["member"], True, set(), "forbidden"),
     ("bob", "carol", None, True, set(), "forbidden"),
     ("nobody", "alice", ["owner"], True, set(), "not_found")],
    ids=["self_leave", "by_owner", "not_a_member", "still_in_by_org", "not_owner", "requester_not_member", "unknown_user"],
)
def test_remove_one(account: str, requester: str, roles: list[str] | None, is_member: bool, orgs: set[str], expected: Any) -> None:
    plan = _remove_one(account, requester, roles, is_member=is_member, room_orgs=orgs)
    if isinstance(expected, str):
        assert isinstance(plan, Failure) and plan.code.value == expected
    else:
        assert isinstance(plan, RemovePlan)
        assert (plan.inner_type, [u.account for u in plan.remove], plan.demote is not None) == expected


def test_remove_org_keeps_individuals_and_members_of_other_orgs() -> None:
    body = RemoveMember(room_id="r1", requester="alice", org_id="org-sales", timestamp=3)
    subscribers = {a: f"u-{a}" for a in ("alice", "dave", "erin", "sales.bot")}
    plan = plan_remove_org(
        body, home="s1", room=CHANNEL, org_members=SALES, subscribers=subscribers,
        individual_ids={"u-erin"}, requester_roles=["owner"], room_orgs={"org-sales"},
    )
    assert isinstance(plan, RemovePlan) and [u.account for u in plan.remove] == ["dave", "sales.bot"]
    plan = plan_remove_org(
        body, home="s1", room=CHANNEL, org_members=SALES, subscribers=subscribers,
        individual_ids=set(), requester_roles=["owner"], room_orgs={"org-sales", "org-sales-2", ""} | {"org-x"},
    )
    assert isinstance(plan, RemovePlan) and [u.account for u in plan.remove] == ["dave", "erin", "sales.bot"]


def test_counts_after_keeps_existing_members_and_drops_removed_ones() -> None:
    from dataflows.room_worker.plans import counts_after
    from schemas.membership import subscription_for

    def sub(account: str) -> Any:
        return subscription_for(
            sub_id=account, user_id=f"u-{account}", account=account, room_id="r", room_type="channel", room_name="r",
            home_site="s1", counterpart="", is_owner=False, joined_at=1,
        )

    before = {"alice": False, "helper.bot": True}
    assert counts_after(before) == (1, 1)
    assert counts_after(before, added=[sub("bob"), sub("alice"), sub("p_tool")]) == (2, 2)  # alice was already in
    assert counts_after(before, removed=["helper.bot", "nobody"]) == (1, 0)
    assert counts_after({}, added=[sub("bob")], removed=["bob"]) == (0, 0)
