"""Role update, rename and add-by-channel end to end (issue 13): two sites, all six flows, every store of both sites.

A remote member promoted and demoted shows the same roles on both sites; a rename reaches both sites'
typeahead and every subscription; a channel's members join another channel once each and are federated
like any add. Refusals (`forbidden`, `conflict`) and client retries of answered requests publish nothing:
checked on the streams after a later marker command, never with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from elasticsearch import ApiError, NotFoundError
from nats.js.api import ConsumerConfig, DeliverPolicy

from dataflows.room_worker.events import dedup_id
from dataflows.search_sync.queries import typeahead
from schemas import names, subjects
from testkit.room_harness import Event, decode
from testkit.stack import Stack
from testkit.support import wait_for

T0 = 1_767_225_600_000
ROLE_UPDATE, RENAME = subjects.RoomOp.MEMBER_ROLE_UPDATE.value, subjects.RoomOp.RENAME.value
Scenario = Callable[[Stack, str, dict[str, str]], Awaitable[None]]


def _run(servers: dict[str, Any], users: Callable[[str, str, str], dict[str, str]], scenario: Scenario) -> None:
    """Open two sites knowing `users(tag, home, remote)` (account -> site) on both, run `scenario`, clean up."""
    tag = uuid.uuid4().hex[:8]
    stack = Stack(servers)

    async def run() -> None:
        try:
            known = users(tag, *stack.sites)
            await stack.open(known.items())
            await scenario(stack, tag, known)
        finally:
            await stack.close()

    asyncio.run(run())


async def published(stack: Stack, stream: str, filter_subject: str = ">") -> list[Event]:
    """Every message of `stream` under `filter_subject`, in stream order (read until the stream's count)."""
    js = stack.client.jetstream()
    info = await js.stream_info(stream, subjects_filter=filter_subject)
    count = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(filter_subject, stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    try:
        return [decode(await sub.next_msg(timeout=10)) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def lanes(stack: Stack) -> tuple[list[Event], list[Event]]:
    """What the home site published: its local lane, and its OUTBOX."""
    home = stack.sites[0]
    local = await published(stack, names.inbox_stream(home), subjects.inbox_local_filter(home))
    return local, await published(stack, names.outbox_stream(home))


def ids(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.envelope["type"], e.msg_id) for e in events]


def roles(stack: Stack, site: str, room: str) -> dict[str, list[str] | None]:
    return {s["u"]["account"]: s.get("roles") for s in stack.db(site).subscriptions.find({"roomId": room})}


def sub_names(stack: Stack, site: str, room: str) -> dict[str, str]:
    return {s["u"]["account"]: s.get("name", "") for s in stack.db(site).subscriptions.find({"roomId": room})}


def found_by(stack: Stack, site: str, account: str, text: str, room: str) -> list[str]:
    """The names under which `account`'s typeahead on `site` finds `room` when typing `text`."""
    return [hit.room_name for hit in typeahead(stack.es, names.spotlight_alias(site), account, text, size=100) if hit.room_id == room]


def answers(stack: Stack, index: str) -> bool:
    """Whether `index` answers a search: search_sync creates it as it starts, and a new shard refuses searches (503) a moment
    longer than cluster health takes to turn yellow."""
    try:
        stack.es.search(index=index, size=0)
    except NotFoundError:
        return False
    except ApiError as exc:
        if exc.status_code != 503:
            raise
        return False
    return True


async def spotlight_ready(stack: Stack) -> None:
    """Until both sites' spotlight indexes answer searches."""
    for site in stack.sites:
        alias = names.spotlight_alias(site)
        await wait_for(lambda alias=alias: answers(stack, alias), timeout=60, what=f"{alias} to answer searches")


def _people(tag: str, home: str, remote: str) -> dict[str, str]:
    return {f"alice-{tag}": home, f"bob-{tag}": home, f"carol-{tag}": remote, f"dave-{tag}": remote, f"marker-{tag}": remote}


# --- role update -------------------------------------------------------------------------------------------


async def _role_scenario(stack: Stack, tag: str, users: dict[str, str]) -> None:
    home, remote = stack.sites
    alice, bob, carol, dave, marker = users
    room = f"r-{tag}"

    async def call(op: str, body: dict[str, Any], rid: str, requester: str = alice) -> dict[str, Any]:
        return await stack.call(home, op, body, requester=requester, request_id=rid)

    def role(account: str, new_role: str, ts: int, requester: str = alice) -> dict[str, Any]:
        return {"roomId": room, "account": account, "newRole": new_role, "requesterId": f"u-{requester}", "requesterAccount": requester, "timestamp": ts}

    def carol_has(wanted: list[str]) -> Callable[[], bool]:
        return lambda: all(sorted(roles(stack, site, room).get(carol) or []) == wanted for site in stack.sites)

    notices = await stack.client.subscribe(f"chat.user.{carol}.event.subscription.update")
    create_id, promote_id, demote_id, marker_id = (str(uuid.uuid4()) for _ in range(4))
    create = {"name": f"ops {tag}", "users": [bob, carol, dave], "roomId": room, "requesterId": f"u-{alice}", "requesterAccount": alice, "timestamp": T0}
    assert (await call("create", create, create_id))["status"] == "ok"

    promoted = await call(ROLE_UPDATE, role(carol, "owner", T0 + 1), promote_id)
    assert promoted["status"] == "ok", promoted
    await wait_for(carol_has(["member", "owner"]), timeout=60, what=f"{carol} owner on both sites")
    assert await call(ROLE_UPDATE, role(carol, "owner", T0 + 1), promote_id) == promoted, "a retry gets the recorded answer"

    demoted = await call(ROLE_UPDATE, role(carol, "member", T0 + 2), demote_id)
    assert demoted["status"] == "ok", demoted
    await wait_for(carol_has(["member"]), timeout=60, what=f"{carol} member only on both sites")
    # retries after the world changed: the recorded answers, and carol stays a member (checked after the marker)
    assert await call(ROLE_UPDATE, role(carol, "owner", T0 + 1), promote_id) == promoted
    assert await call(ROLE_UPDATE, role(carol, "member", T0 + 2), demote_id) == demoted

    refusals = [
        (role(alice, "member", T0 + 3), alice, "conflict"),  # alice is the last owner
        (role(dave, "owner", T0 + 4, requester=dave), dave, "forbidden"),  # dave is no owner
        (role(bob, "owner", T0 + 5, requester=dave), dave, "forbidden"),
    ]
    for body, requester, code in refusals:
        rid = str(uuid.uuid4())
        refused = await call(ROLE_UPDATE, body, rid, requester)
        assert (refused["status"], refused.get("code")) == ("error", code), refused
        assert await call(ROLE_UPDATE, body, rid, requester) == refused

    marker_add = {"roomId": room, "users": [marker], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 10}
    assert (await call("member.add", marker_add, marker_id))["status"] == "ok"
    await stack.drained()
    stack.assert_alive()

    members = {alice, bob, carol, dave, marker}
    for site in stack.sites:
        assert stack.views(site) == stack.expected(site, {room: members}, {room: home}, users), f"stores of {site}"
    assert roles(stack, home, room) == {alice: ["owner"], bob: ["member"], carol: ["member"], dave: ["member"], marker: ["member"]}
    assert roles(stack, remote, room) == {carol: ["member"], dave: ["member"], marker: ["member"]}

    local, outbox = await lanes(stack)
    assert ids(local) == [("member_added", dedup_id(create_id, home)), ("member_added", dedup_id(marker_id, home))]
    assert ids(outbox) == [
        ("member_added", dedup_id(create_id, remote)),
        ("role_updated", dedup_id(promote_id, remote)),
        ("role_updated", dedup_id(demote_id, remote)),
        ("member_added", dedup_id(marker_id, remote)),
    ]
    for event, wanted in zip(outbox[1:3], (["member", "owner"], ["member"]), strict=True):
        assert event.envelope["destSiteId"] == remote
        assert event.inner["subscription"]["u"]["account"] == carol
        assert (event.inner["subscription"]["roomId"], sorted(event.inner["subscription"]["roles"])) == (room, wanted)
    # the member's notices: one per applied role change at least (core NATS, so read what arrived by now)
    seen = [await notices.next_msg(timeout=5) for _ in range(2)]
    assert all(room.encode() in msg.data for msg in seen)
    await notices.unsubscribe()


@pytest.mark.slow
def test_role_update_of_a_remote_member_reaches_both_sites_once(servers: dict[str, Any]) -> None:
    _run(servers, _people, _role_scenario)


# --- rename ------------------------------------------------------------------------------------------------


OLD, NEW, STALE = "orchid lounge", "tulip garden", "lily pond"


def _renamed_everywhere(stack: Stack, room: str, users: dict[str, str], members: set[str]) -> list[str]:
    """What still disagrees with `room` being named NEW on every site: subscriptions and typeahead."""
    home = stack.sites[0]
    wrong = []
    for site in stack.sites:
        visible = sorted(a for a in members if site == home or users[a] == site)
        names_here = sub_names(stack, site, room)
        wrong += [f"{site} subscription {a}: {names_here.get(a)!r}" for a in visible if names_here.get(a) != NEW]
        for account in visible:
            if found_by(stack, site, account, NEW, room) != [NEW]:
                wrong.append(f"{site} typeahead {account}: {NEW!r} not found")
            wrong += [f"{site} typeahead {account}: still found as {old!r}" for old in (OLD, STALE) if found_by(stack, site, account, old, room)]
    return wrong


async def _rename_scenario(stack: Stack, tag: str, users: dict[str, str]) -> None:
    home, remote = stack.sites
    alice, bob, carol, dave, marker = users
    room = f"r-{tag}"

    async def call(op: str, body: dict[str, Any], rid: str) -> dict[str, Any]:
        return await stack.call(home, op, body, requester=alice, request_id=rid)

    def rename(name: str, ts: int) -> dict[str, Any]:
        return {"roomId": room, "newName": name, "requesterId": f"u-{alice}", "requesterAccount": alice, "timestamp": ts}

    create_id, rename_id, marker_id = (str(uuid.uuid4()) for _ in range(3))
    create = {"name": OLD, "users": [bob, carol, dave], "roomId": room, "requesterId": f"u-{alice}", "requesterAccount": alice, "timestamp": T0}
    assert (await call("create", create, create_id))["status"] == "ok"
    members = {alice, bob, carol, dave}
    await spotlight_ready(stack)
    await wait_for(lambda: all(found_by(stack, s, carol, OLD, room) for s in stack.sites), timeout=60, what="the room searchable on both sites")

    renamed = await call(RENAME, rename(NEW, T0 + 10), rename_id)
    assert renamed["status"] == "ok", renamed
    await wait_for(lambda: not _renamed_everywhere(stack, room, users, members), timeout=60, what=f"{NEW!r} on both sites")

    # an older rename delivered after the newer one, and a retry of the newer: neither may change anything
    await call(RENAME, rename(STALE, T0 + 5), str(uuid.uuid4()))
    before_local, before_outbox = (len(events) for events in await lanes(stack))
    assert await call(RENAME, rename(NEW, T0 + 10), rename_id) == renamed, "a retry gets the recorded answer"

    marker_add = {"roomId": room, "users": [marker], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 20}
    assert (await call("member.add", marker_add, marker_id))["status"] == "ok"
    members.add(marker)
    await stack.drained()
    stack.assert_alive()

    for site in stack.sites:  # typeahead is a search: what the drained flows wrote, refreshed
        stack.es.indices.refresh(index=names.spotlight_alias(site))
    assert _renamed_everywhere(stack, room, users, members) == []
    assert stack.db(home).rooms.find_one({"_id": room})["name"] == NEW
    for site in stack.sites:
        assert stack.views(site) == stack.expected(site, {room: members}, {room: home}, users), f"stores of {site}"

    local, outbox = await lanes(stack)
    assert ids(local[before_local:]) == [("member_added", dedup_id(marker_id, home))], "the retry published nothing"
    assert ids(outbox[before_outbox:]) == [("member_added", dedup_id(marker_id, remote))], "the retry published nothing"
    renames = {(e.envelope["destSiteId"], e.inner["newName"]) for e in [*local, *outbox] if e.msg_id.startswith(rename_id)}
    assert renames == {(home, NEW), (remote, NEW)}, "room_renamed on the local lane and to the remote site with members"


@pytest.mark.slow
def test_rename_reaches_typeahead_and_subscriptions_of_both_sites(servers: dict[str, Any]) -> None:
    _run(servers, _people, _rename_scenario)


# --- add by channel ----------------------------------------------------------------------------------------


def _channel_users(tag: str, home: str, remote: str) -> dict[str, str]:
    # erin, frank and the org's bot get their org in the scenario (sectId)
    people = ("alice", "bob", "carol", "dave", "erin", "frank", "helper.bot", "p_tool", "marker")
    sites = {"carol": remote, "dave": remote, "frank": remote, "p_tool": remote, "marker": remote}
    return {f"{p}-{tag}" if "." not in p else f"helper-{tag}.bot": sites.get(p, home) for p in people}


async def _channel_scenario(stack: Stack, tag: str, users: dict[str, str]) -> None:
    home, remote = stack.sites
    alice, bob, carol, dave, erin, frank, helper_bot, tool_bot, marker = users
    org = f"org-{tag}"
    for site in stack.sites:  # erin, frank and a bot are the org (inbox_mirror needs the users on both sites)
        stack.db(site).users.update_many({"account": {"$in": [erin, frank, tool_bot]}}, {"$set": {"sectId": org}})
    src, dst, fresh = f"src-{tag}", f"dst-{tag}", f"new-{tag}"

    async def call(op: str, body: dict[str, Any], rid: str) -> dict[str, Any]:
        answer = await stack.call(home, op, body, requester=alice, request_id=rid)
        assert answer["status"] == "ok", answer
        return answer

    def create(room: str, users_: list[str], ts: int, **extra: Any) -> dict[str, Any]:
        return {"name": room, "users": users_, "roomId": room, "requesterId": f"u-{alice}", "requesterAccount": alice, "timestamp": ts, **extra}

    rids = {step: str(uuid.uuid4()) for step in ("src", "dst", "add", "fresh", "marker")}
    # the source: individuals (one of them a bot) and an org (whose bot org expansion leaves out)
    await call("create", create(src, [bob, carol, helper_bot], T0, orgs=[org]), rids["src"])
    await call("create", create(dst, [dave], T0 + 1), rids["dst"])
    channel = [{"roomId": src, "siteId": home}]
    add = {"roomId": dst, "users": [bob], "channels": channel, "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 2}
    added = await call("member.add", add, rids["add"])
    assert await stack.call(home, "member.add", add, requester=alice, request_id=rids["add"]) == added, "a retry gets the recorded answer"
    await call("create", create(fresh, [], T0 + 3, channels=channel), rids["fresh"])
    marker_add = {"roomId": dst, "users": [marker], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 4}
    await call("member.add", marker_add, rids["marker"])
    await stack.drained()
    stack.assert_alive()

    humans = {alice, bob, carol, erin, frank}  # the source's members without its bot
    members = {src: humans | {helper_bot}, dst: humans | {dave, marker}, fresh: humans}
    for site in stack.sites:
        assert stack.views(site) == stack.expected(site, members, dict.fromkeys(members, home), users), f"stores of {site}"

    local, outbox = await lanes(stack)
    by_id = {e.msg_id: e for e in [*local, *outbox]}
    assert ids(local) == [("member_added", dedup_id(rids[s], home)) for s in rids]
    assert ids(outbox) == [("member_added", dedup_id(rids[s], remote)) for s in rids]
    # each new member once: bob (named and in the channel) once, the requester (already in) not at all, no bot
    assert sorted(by_id[dedup_id(rids["add"], home)].inner["accounts"]) == sorted([bob, carol, erin, frank])
    assert sorted(by_id[dedup_id(rids["add"], remote)].inner["accounts"]) == sorted([carol, frank])
    assert sorted(by_id[dedup_id(rids["fresh"], home)].inner["accounts"]) == sorted(humans)
    assert sorted(by_id[dedup_id(rids["fresh"], remote)].inner["accounts"]) == sorted([carol, frank])


@pytest.mark.slow
def test_add_by_channel_adds_its_human_members_once_on_both_sites(servers: dict[str, Any]) -> None:
    _run(servers, _channel_users, _channel_scenario)
