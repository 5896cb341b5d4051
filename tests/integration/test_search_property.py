"""Random add/remove histories drained by the real search_sync flow equal the per-(account, room) timestamp-order oracle."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.search_sync.indexes import install
from testkit.clients import es_client
from testkit.search_oracle import Event, oracle
from testkit.search_site import (
    SearchSite,
    close_site,
    open_site,
    publishable,
)
from testkit.support import connect_site

_examples = itertools.count()


@pytest.fixture(scope="module")
def prop_site(servers: dict[str, Any]) -> Iterator[SearchSite]:
    """One flow for every example (examples use their own accounts and rooms); spotlight keeps no delete tombstones."""
    async def open_() -> SearchSite:
        opened = await open_site(servers, es_client(servers))
        await opened.nc.close()  # each round connects on its own event loop
        return opened

    site = asyncio.run(open_())
    install(site.es, site.indexes)
    # tombstones expire at once: last-write-wins must not depend on them (issue 3)
    site.es.indices.put_settings(index=site.indexes.spotlight, settings={"index.gc_deletes": "0s"})
    site.start_flow()
    yield site

    async def close() -> None:
        site.nc = await connect_site(servers, "s1")
        await close_site(site)

    asyncio.run(close())


def _run_round(site: SearchSite, batches: list[list[Event]], pause: float = 0) -> None:
    async def go() -> None:
        site.nc = await connect_site(site.servers, "s1")
        try:
            for batch in batches:
                await site.publish(publishable(site.site, batch))
                await site.drain()
                await asyncio.sleep(pause)  # let a delete tombstone (if one were used) expire
        finally:
            await site.nc.close()

    asyncio.run(go())


def _views_with_prefix(site: SearchSite, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    user_rooms, spotlight = site.views()
    return ({k: v for k, v in user_rooms.items() if k.startswith(prefix)}, {k: v for k, v in spotlight.items() if k.startswith(prefix)})


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Event], list[list[Event]]]:
    """Distinct-timestamp events, delivered shuffled with duplicates, in up to three drained rounds."""
    prefix = f"h{next(_examples)}-"
    shapes = draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 2), st.booleans(), st.booleans(), st.integers(1, 9), st.sampled_from(["", "sixteen", "sixteen-b"])),
            min_size=1,
            max_size=25,
        )
    )
    stamps = draw(st.permutations(range(1, len(shapes) + 1)))
    events = [
        # two adds of one membership disagree on joinedAt, restriction and name: the oldest shapes it (issue 10)
        Event(f"{prefix}u{a}", f"{prefix}r{r}", ts * 10, add, ts * 10 - 5 if add and restricted else 0, ts * 10 - lag if add else 0, name if add else "")
        for (a, r, add, restricted, lag, name), ts in zip(shapes, stamps)
    ]
    order = draw(st.permutations(events + draw(st.lists(st.sampled_from(events), max_size=8))))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(order) - 1, 1)), max_size=2)))
    rounds = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]
    return events, [batch for batch in rounds if batch]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=histories())
def test_random_histories_equal_the_timestamp_order_oracle(prop_site: SearchSite, history: tuple[list[Event], list[list[Event]]]) -> None:
    events, rounds = history
    prefix = events[0].account.split("-")[0] + "-"
    _run_round(prop_site, rounds)
    assert _views_with_prefix(prop_site, prefix) == oracle(events)


def test_stale_add_after_tombstone_expiry_does_not_resurrect(prop_site: SearchSite) -> None:
    add, remove, stale = Event("gc-u", "gc-r", 10, True), Event("gc-u", "gc-r", 30, False), Event("gc-u", "gc-r", 20, True)
    _run_round(prop_site, [[add], [remove], [stale]], pause=1.5)
    assert _views_with_prefix(prop_site, "gc-") == oracle([add, remove, stale])
    assert _views_with_prefix(prop_site, "gc-")[1] == {}
