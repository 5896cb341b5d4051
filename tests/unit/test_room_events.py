"""Events built by room_worker's logic are byte-identical to the shared Go vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataflows.room_worker.commands import Publish
from dataflows.room_worker.events import (
    accounts_by_remote_site,
    member_added_publishes,
    member_removed_publishes,
)
from schemas.documents import Room, User

VECTORS = Path(__file__).parents[3] / "shared" / "vectors"


def _vector(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return loaded


def _users(*pairs: tuple[str, str]) -> list[User]:
    return [User(id=f"u-{a}-id", account=a, site_id=s) for a, s in pairs]


def _added(room: Room, members: list[User], *, joined: int, now: int, base: str, hss: int = 0) -> list[Publish]:
    return member_added_publishes(
        room=room, members=members, requester_account="alice", joined_at=joined, history_shared_since=hss, now_ms=now, dedup_base=base
    )


ENG = Room(id="r-eng", name="eng-platform", type="channel", site_id="s1", created_at=1, updated_at=1)
CASES = {
    "01_create_channel_local_lane": lambda: _added(
        ENG, _users(("alice", "s1"), ("bob", "s1"), ("carol", "s2")), joined=1767225600000, now=1767225600123, base="0195f0a2-7c1d-7e3a-9b41-5d2c8e6f1a20"
    )[0],
    "02_create_channel_outbox_to_s2": lambda: _added(
        ENG, _users(("alice", "s1"), ("bob", "s1"), ("carol", "s2")), joined=1767225600000, now=1767225600123, base="0195f0a2-7c1d-7e3a-9b41-5d2c8e6f1a20"
    )[1],
    "03_create_dm_outbox_to_s2": lambda: _added(
        Room(id="u-alice-idu-carol-id", name="", type="dm", site_id="s1", created_at=1, updated_at=1),
        _users(("alice", "s1"), ("carol", "s2")),
        joined=1767225700000,
        now=1767225700050,
        base="0195f0a2-0000-7000-8000-000000000003",
    )[1],
    "04_create_botdm_local_lane": lambda: _added(
        Room(id="u-alice-idu-helper-id", name="", type="botDM", site_id="s1", created_at=1, updated_at=1),
        _users(("alice", "s1"), ("helper.bot", "s1")),
        joined=1767225800000,
        now=1767225800010,
        base="0195f0a2-0000-7000-8000-000000000004",
    )[0],
    "05_add_members_history_none_outbox": lambda: _added(
        ENG, _users(("dave", "s2"), ("erin", "s2")), joined=1767226000000, now=1767226000200, base="0195f0a2-0000-7000-8000-000000000005", hss=1767226000000
    )[1],
    "06_self_leave_local_lane": lambda: member_removed_publishes(
        home="s1", room_id="r-eng", members=_users(("bob", "s1")), inner_type="member_left", org_id="", now_ms=1767226100000,
        dedup_base="0195f0a2-0000-7000-8000-000000000006",
    )[0],
    "07_remove_org_outbox": lambda: member_removed_publishes(
        home="s1", room_id="r-eng", members=_users(("dave", "s2"), ("erin", "s2")), inner_type="member_removed", org_id="org-sales",
        now_ms=1767226200000, dedup_base="0195f0a2-0000-7000-8000-000000000007",
    )[1],
}


@pytest.mark.parametrize("name", sorted(CASES), ids=sorted(CASES))
def test_publish_matches_vector_bytes(name: str) -> None:
    vector = _vector(name)
    built = CASES[name]()
    assert built.subject == vector["subject"]
    assert built.msg_id == vector["headers"]["Nats-Msg-Id"]
    assert built.data == vector["data"].encode()


def test_no_members_publishes_nothing() -> None:
    assert _added(ENG, [], joined=1, now=2, base="b") == []
    assert member_removed_publishes(home="s1", room_id="r", members=[], inner_type="member_removed", org_id="", now_ms=1, dedup_base="b") == []


def test_users_without_a_site_stay_on_the_local_lane_only() -> None:
    published = _added(ENG, _users(("alice", "s1"), ("ghost", "")), joined=1, now=2, base="b")
    assert [p.subject for p in published] == ["chat.inbox.s1.member_added"]


SITES = st.sampled_from(["s1", "s2", "s3", ""])


@given(st.lists(st.tuples(st.from_regex(r"[a-z]{1,6}", fullmatch=True), SITES), unique_by=lambda p: p[0], max_size=12))
def test_remote_groups_partition_the_remote_members(pairs: list[tuple[str, str]]) -> None:
    members = _users(*pairs)
    grouped = accounts_by_remote_site("s1", members)
    assert "s1" not in grouped and "" not in grouped
    flat = [a for accounts in grouped.values() for a in accounts]
    assert sorted(flat) == sorted(a for a, s in pairs if s not in ("s1", ""))
    assert all(dict(pairs)[a] == site for site, accounts in grouped.items() for a in accounts)
    published = _added(ENG, members, joined=1, now=2, base="b")
    assert len(published) == (1 + len(grouped) if members else 0)
    assert len({p.msg_id for p in published}) == len(published)
