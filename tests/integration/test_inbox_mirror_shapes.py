"""Which member_added shapes a mirrored subscription: never the batching, arrival order, process count or redeliveries.

Issue 10, items 5 and 6. SYSTEM.md §4: the result is the state after applying the events in timestamp order, and an
add leaves an existing subscription as it is, so the OLDEST add since the last remove shapes the subscription.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.mirror_site import BASE_MS, Item, MirrorSite, add, mirror_site, remove

T = BASE_MS
SHAPE = ("name", "roomType", "roles", "isSubscribed", "joinedAt", "historySharedSince", "siteId")


def events(room: str) -> dict[str, Item]:
    """Two different adds of `a` with no remove between (A older, B with historySharedSince), then a remove and a re-add.

    `b` is in A and C only: with no remove of its own, A must shape it even when C arrives first.
    """
    return {
        "A": add(room, ["a", "b"], T, name="sixteen", joined_at=T),
        "B": add(room, ["a"], T + 1, name="sixteen-b", joined_at=T + 1, hss=T + 1),
        "X": remove(room, ["a"], T + 2),
        "C": add(room, ["a", "b"], T + 3, name="sixteen-c", joined_at=T + 3),
    }


def oracle(items: list[Item], site: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Apply the events one account at a time in timestamp order: an add inserts its shape only if absent."""
    steps = [(ts, kind == "member_removed", event, account) for kind, event, ts in items for account in event.accounts]  # type: ignore[union-attr]
    subs: dict[tuple[str, str], dict[str, Any]] = {}
    for _, removed, event, account in sorted(steps, key=lambda step: step[:2]):  # a remove after an add of the same ms
        key = (event.room_id, account)
        if removed:
            subs.pop(key, None)
        elif key not in subs:  # channel adds only (SYSTEM.md §4)
            hss = event.history_shared_since
            subs[key] = {
                "name": event.room_name, "roomType": "channel", "roles": ["member"], "isSubscribed": False,
                "joinedAt": event.joined_at, "historySharedSince": hss if isinstance(hss, int) else None, "siteId": site,
            }
    return subs


def observed(s: MirrorSite, rooms: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["roomId"], d["u"]["account"]): {f: d.get(f) for f in SHAPE} for d in s.subs(roomId={"$in": rooms})}


def scenarios() -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Every non-empty subset of A, B, X, C in every order, cut into consecutive chunks in every way."""
    out = []
    for size in range(1, 5):
        for order in itertools.permutations("ABXC", size):
            for cuts in itertools.product((0, 1), repeat=size - 1):
                out.append((order, cuts))
    return out


def chunks(order: tuple[str, ...], cuts: tuple[int, ...]) -> list[list[str]]:
    out = [[order[0]]]
    for name, cut in zip(order[1:], cuts, strict=True):
        if cut:
            out.append([])
        out[-1].append(name)
    return out


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-processes"])
def test_every_order_and_batching_gives_the_timestamp_order_shapes(servers: dict[str, Any], processes: int) -> None:
    """316 rooms, one per (subset, order, cuts); chunk k of every room is published in round k, drained between rounds.

    Round 1 is a backlog published before the flow starts (big batches); later rounds meet the running flow.
    """
    with mirror_site(servers) as s:
        s.users(["a", "b"])
        plans = [(f"p{processes}-{i}", chunks(order, cuts)) for i, (order, cuts) in enumerate(scenarios())]
        published: list[Item] = []
        flow = None
        try:
            for round_no in range(4):
                batch = [events(room)[name] for room, parts in plans if round_no < len(parts) for name in parts[round_no]]
                s.publish(batch)
                published += batch
                if flow is None:
                    flow = s.flow(processes=processes, CHATFED_FLUSH_MS="20").start()
                s.drained(timeout=120)
            flow.assert_alive()
        finally:
            if flow is not None:
                flow.stop()
        rooms = [room for room, _ in plans]
        want, got = oracle(published, s.other), observed(s, rooms)
        wrong = {room: (chunks_, {k: v for k, v in got.items() if k[0] == room}) for room, chunks_ in plans if {k: v for k, v in got.items() if k[0] == room} != {k: v for k, v in want.items() if k[0] == room}}
        assert not wrong, f"{len(wrong)} of {len(plans)} rooms differ from the oracle, e.g. {list(wrong.items())[:3]}"


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def running(servers: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[MirrorSite]:
    with mirror_site(servers) as s:
        s.users(["a", "b"])
        with s.flow(processes=request.param, CHATFED_FLUSH_MS="20") as flow:
            yield s
            flow.assert_alive()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    arrivals=st.lists(st.sampled_from("ABXC"), min_size=1, max_size=8),  # any order, duplicates = redeliveries
    cuts=st.lists(st.booleans(), min_size=7, max_size=7),  # drain the flow between two arrivals, or not
)
def test_arrivals_with_redeliveries_give_the_timestamp_order_shapes(running: MirrorSite, arrivals: list[str], cuts: list[bool]) -> None:
    room = uuid.uuid4().hex  # fresh per example: hypothesis replays examples while shrinking
    by_name = events(room)
    pending: list[Item] = []
    for index, name in enumerate(arrivals):
        pending.append(by_name[name])
        if index == len(arrivals) - 1 or cuts[index]:
            running.publish(pending)
            running.drained()
            pending = []
    assert observed(running, [room]) == oracle([by_name[n] for n in arrivals], running.other)


def test_discussion_is_named_after_the_room_with_no_roles(servers: dict[str, Any]) -> None:
    """Issue 10 item 6, SYSTEM.md §4: discussion ⇒ name = roomName, roles null."""
    with mirror_site(servers) as s, s.flow() as flow:
        s.users(["a"])
        s.publish([add("d1", ["a"], T, name="launch thread", room_type="discussion", requester="z")])
        s.drained()
        flow.assert_alive()
        (doc,) = s.subs()
        assert {f: doc.get(f) for f in SHAPE} == {
            "name": "launch thread", "roomType": "discussion", "roles": None, "isSubscribed": False,
            "joinedAt": T, "historySharedSince": None, "siteId": s.other,
        }
