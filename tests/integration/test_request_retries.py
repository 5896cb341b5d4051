"""A request id has exactly one outcome (SYSTEM.md §2.3): a late client retry changes no store on any site.

Issue 10 item 1: remove bob → ok, add bob → ok, the client resends the same remove (same request id,
same body) — before the fix home MongoDB lost bob while the search views and the remote mirror kept
him. Driven through every flow of two sites, inside and outside a shortened duplicate window, and
every store on both sites compared with the expected memberships.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from testkit.stack import Stack

WINDOW_S = 1.0
T0 = 1_767_225_600_000


def _users(tag: str, home: str, remote: str) -> dict[str, str]:
    return {f"alice-{tag}": home, f"bob-{tag}": home, f"carol-{tag}": remote, f"marker-{tag}": remote}


async def _scenario(stack: Stack, tag: str, first: str, *, outside_window: bool) -> None:
    home, remote = stack.sites
    users = _users(tag, home, remote)
    alice, bob, carol, marker = list(users)
    room = f"r-{tag}"
    created = await stack.call(home, "create", {"name": f"room {tag}", "users": [bob, carol], "roomId": room, "requesterAccount": alice, "timestamp": T0}, requester=alice)
    assert created["status"] == "ok", created

    def remove(account: str, ts: int) -> dict[str, Any]:
        return {"roomId": room, "requester": alice, "account": account, "timestamp": ts}

    def add(account: str, ts: int) -> dict[str, Any]:
        return {"roomId": room, "users": [account], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": ts}

    members = {alice, bob, carol}
    if first == "add":  # add/remove/retry the add: bob and carol must first be out
        for ts, account in enumerate((bob, carol), start=1):
            assert (await stack.call(home, "member.remove", remove(account, T0 + ts), requester=alice))["status"] == "ok"
        members -= {bob, carol}
    ts = T0 + 10
    answers: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for account in (bob, carol):
        first_body, then_body = (remove(account, ts), add(account, ts + 1)) if first == "remove" else (add(account, ts), remove(account, ts + 1))
        first_op, then_op = ("member.remove", "member.add") if first == "remove" else ("member.add", "member.remove")
        rid = str(uuid.uuid4())
        answer = await stack.call(home, first_op, first_body, requester=alice, request_id=rid)
        assert answer["status"] == "ok", answer
        assert (await stack.call(home, then_op, then_body, requester=alice))["status"] == "ok"
        if outside_window:
            await asyncio.sleep(WINDOW_S * 2.5)  # the dedup windows forget the first events' ids
        answers.append((answer, await stack.call(home, first_op, first_body, requester=alice, request_id=rid)))
        ts += 10
    if first == "add":
        members -= {bob, carol}
    else:
        members |= {bob, carol}
    # barrier: a later command of the same room, seen by every store, then every durable drained
    assert (await stack.call(home, "member.add", add(marker, ts + 100), requester=alice))["status"] == "ok"
    members.add(marker)
    await stack.drained()
    stack.assert_alive()
    homes = {room: home}
    for site in stack.sites:
        assert stack.views(site) == stack.expected(site, {room: members}, homes, users), f"stores of {site}"
    for answer, again in answers:
        assert again == answer, "a retry gets the recorded result again"


@pytest.mark.slow
@pytest.mark.parametrize("first", ["remove", "add"])
@pytest.mark.parametrize("outside_window", [False, True], ids=["inside-window", "outside-window"])
def test_a_late_retry_of_an_answered_command_changes_nothing(servers: dict[str, Any], first: str, outside_window: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    stack = Stack(servers)

    async def run() -> None:
        try:
            users = _users(tag, *stack.sites)
            await stack.open(users.items(), duplicate_window_s=WINDOW_S)
            await _scenario(stack, tag, first, outside_window=outside_window)
        finally:
            await stack.close()

    asyncio.run(run())
