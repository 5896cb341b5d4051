"""Through the real search_sync flow: of two adds without a removal between, the OLDER one shapes the membership.

Every delivery order and every way of cutting it into drained rounds, for the issue's two adds and with a
later removal / re-add or a removal between two adds, each history on its own account so all run at once.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from testkit.clients import es_client
from testkit.search_oracle import Event, oracle
from testkit.search_site import SearchSite, close_site, open_site, publishable

T = 1_000


def _history(account: str) -> dict[str, Event]:
    return {
        "A": Event(account, "room16", T, True, 0, 900, "sixteen"),  # add A: no historySharedSince
        "B": Event(account, "room16", T + 1, True, T - 50, T - 50, "sixteen-b"),  # add B: restricted, newer
        "REMOVE": Event(account, "room16", T + 2, False),
        "READD": Event(account, "room16", T + 3, True, T + 3, T + 3, "sixteen-c"),
        "BETWEEN": Event(account, "room16", T + 1, False),
        "LATER": Event(account, "room16", T + 2, True, 0, T + 2, "sixteen-b"),
    }


HISTORIES = [("A", "B"), ("A", "B", "REMOVE", "READD"), ("A", "BETWEEN", "LATER")]


def _splits(order: tuple[str, ...]) -> list[list[list[str]]]:
    """Every way to cut a delivery order into consecutive rounds."""
    found = []
    for mask in range(2 ** (len(order) - 1)):
        rounds, current = [], [order[0]]
        for index, name in enumerate(order[1:]):
            if mask >> index & 1:
                rounds.append(current)
                current = []
            current.append(name)
        found.append([*rounds, current])
    return found


def _scenarios(prefix: str) -> tuple[list[Event], list[list[Event]]]:
    """All histories x delivery orders x cuts, one account each; stage k holds every scenario's k-th round."""
    events: list[Event] = []
    stages: list[list[Event]] = []
    accounts = itertools.count()
    for names in HISTORIES:
        for order in itertools.permutations(names):
            for rounds in _splits(order):
                history = _history(f"{prefix}u{next(accounts)}")
                events += [history[name] for name in names]
                for stage, batch in enumerate(rounds):
                    if len(stages) <= stage:
                        stages.append([])
                    stages[stage] += [history[name] for name in batch]
    return events, stages


@pytest.fixture
async def search_site(servers: dict[str, Any]) -> AsyncIterator[SearchSite]:
    site = await open_site(servers, es_client(servers))
    yield site
    await close_site(site)


@pytest.mark.parametrize("processes", [1, 2])
async def test_the_oldest_add_since_the_last_removal_shapes_the_membership(search_site: SearchSite, processes: int) -> None:
    events, stages = _scenarios("s-")
    search_site.start_flow(processes=processes)
    for stage in stages:
        await search_site.publish(publishable(search_site.site, stage))
        await search_site.drain()
    user_rooms, spotlight = search_site.views()
    expected_rooms, expected_spotlight = oracle(events)
    assert user_rooms == expected_rooms
    assert spotlight == expected_spotlight
    # the case spelled out: B first in one backlog, A after it: A's joinedAt, unrestricted, B's newer name
    a_then_b = {account for account, doc in expected_rooms.items() if doc["roomTimestamps"] == {"room16": T + 1}}
    assert a_then_b
    for account in a_then_b:
        assert spotlight[f"{account}_room16"] == {"roomName": "sixteen-b", "joinedAt": 900}
        assert user_rooms[account]["rooms"] == ["room16"] and user_rooms[account]["restrictedRooms"] == {}
