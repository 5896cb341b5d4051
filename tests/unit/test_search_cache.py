"""search_sync's write cache (dataflows/search_sync/cache.py): exact copies, and a bound in bytes and entries (issue 12)."""

from __future__ import annotations

import random

import msgspec
import pytest

from connectors.settings import ElasticSettings
from dataflows.search_sync.cache import ENTRY_OVERHEAD, WriteCache
from dataflows.search_sync.indexes import SearchIndexes
from dataflows.search_sync.views import Join, Membership, UserRoomBody
from dataflows.search_sync.writer import CACHED_ACCOUNTS, CACHED_BYTES, SearchViewsWriter


def user_room(account: str, rooms: int, ts: int = 1_760_000_000_000) -> UserRoomBody:
    stamps = {f"r{i}": ts + i for i in range(rooms)}
    return UserRoomBody(
        user_account=account,
        rooms=sorted(stamps)[1:],
        restricted_rooms={"r0": ts - 5} if rooms else {},
        room_timestamps=stamps,
        created_at=ts,
        updated_at=ts + rooms,
        room_joins={"r1": Membership(since=ts, adds=(Join(ts=ts + 1, joined_at=ts, history_shared_since=0, room_type="channel", site_id="s1"),))}
        if rooms > 1
        else {},
    )


def test_a_cached_document_comes_back_equal_with_its_token() -> None:
    cache = WriteCache(UserRoomBody, max_bytes=1 << 20, max_entries=10)
    doc = user_room("u1", 40)
    cache.put("u1", doc, (7, 1))
    assert cache.get("u1") == (doc, (7, 1))
    assert cache.get("u2") is None


def test_the_least_recently_written_goes_first() -> None:
    cost = len(msgspec.msgpack.encode(user_room("u0", 10))) + ENTRY_OVERHEAD
    cache = WriteCache(UserRoomBody, max_bytes=3 * cost, max_entries=100)
    for account in ("u0", "u1", "u2"):
        cache.put(account, user_room(account[:2], 10), (1, 1))
    cache.put("u0", user_room("u0", 10), (2, 1))  # written again: now the most recent
    cache.put("u3", user_room("u3", 10), (1, 1))
    assert [a for a in ("u0", "u1", "u2", "u3") if cache.get(a) is not None] == ["u0", "u2", "u3"]


@pytest.mark.parametrize(("max_bytes", "max_entries"), [(50_000, 1_000), (1 << 20, 25)], ids=["bytes bind", "entries bind"])
def test_puts_of_any_size_stay_within_both_limits_and_account_exactly(max_bytes: int, max_entries: int) -> None:
    rnd = random.Random(12)
    cache = WriteCache(UserRoomBody, max_bytes=max_bytes, max_entries=max_entries)
    for step in range(2_000):
        account = f"u{rnd.randrange(300)}"
        if step % 7 == 0:
            cache.discard(account)
        else:
            cache.put(account, user_room(account, rnd.randrange(0, 200)), (step, 1))
        assert cache.nbytes <= max_bytes and len(cache) <= max_entries
    kept = [(key, data) for key, (data, *_) in cache._entries.items()]
    assert cache.nbytes == sum(len(data) + ENTRY_OVERHEAD for _, data in kept)
    assert len(kept) >= min(max_entries, 10)  # bounded, not emptied


def test_a_document_bigger_than_the_budget_is_not_kept_and_evicts_nothing() -> None:
    cache = WriteCache(UserRoomBody, max_bytes=2_000, max_entries=10)
    cache.put("small", user_room("small", 2), (1, 1))
    cache.put("huge", user_room("huge", 500), (1, 1))
    assert cache.get("huge") is None and cache.get("small") is not None


def test_clear_forgets_everything() -> None:
    cache = WriteCache(UserRoomBody, max_bytes=1 << 20, max_entries=10)
    cache.put("u1", user_room("u1", 3), (1, 1))
    cache.clear()
    assert (len(cache), cache.nbytes, cache.get("u1")) == (0, 0, None)


def test_the_writer_keeps_its_user_room_copies_within_its_byte_budget() -> None:
    writer = SearchViewsWriter(ElasticSettings(url="http://127.0.0.1:9"), SearchIndexes(user_room="ur", spotlight="sp", room_names="rn"), flow="t")
    big = user_room("u", 1_000)  # ~15 kB encoded: 1,500 of them are past the budget, 20k entries or not
    for i in range(1_500):
        writer._remember_user_room(f"u{i}", (big, (i, 1)))
    cache = writer._user_rooms
    assert CACHED_BYTES - 20_000 < cache.nbytes <= CACHED_BYTES and len(cache) < min(1_500, CACHED_ACCOUNTS)
    assert writer._fetch(["u1499"], {"u1499": []}, hinted=True).from_cache == {"u1499"}  # the newest is served from it
