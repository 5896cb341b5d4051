"""Subscription shaping of inbox_mirror, run through bytewax.testing: the golden vectors and the reference's cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.operators import decode_or_dead_letter
from dataflows.inbox_mirror import rules as mirror
from schemas import names, subjects
from schemas.carriers import Delivery
from schemas.documents import to_mongo
from schemas.envelope import OutboxEvent, encode_envelope
from schemas.events import MemberAddEvent, encode_event
from schemas.streams import site_consumers

VECTORS = sorted((Path(__file__).parents[3] / "shared" / "vectors").glob("*.json"))


def delivery(subject: str, data: bytes, seq: int = 1, *, origin: str = "s1") -> Delivery:
    """As sourced from `OUTBOX_{origin}`: the server names it in `Nats-Stream-Source` (the origin check reads it)."""
    source = {"Nats-Stream-Source": f"OUTBOX_{origin} {seq} outbox.{origin}.to.s2.> chat.inbox.s2.aggregate.> outbox.{origin}.to.s2.x"}
    reply = f"$JS.ACK.INBOX_s2.inbox-worker.1.{seq}.{seq}.0.0"
    return Delivery(subject=subject, data=data, reply=reply, stream="INBOX_s2", stream_seq=seq, num_delivered=1, headers=source)


def shaped(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    """decode → changes → the subscription each add would insert (user `_id` = `id-{account}`)."""
    out: list[dict[str, Any]] = []
    flow = Dataflow("shaping")
    changes = decode_or_dead_letter("decode", op.input("in", flow, TestingSource(deliveries)), mirror.decode).parts
    subs = op.map("shape", changes, lambda c: to_mongo(mirror.subscription_of(c, user_id=f"id-{c.account}", sub_id=f"sub-{c.account}")))
    op.output("out", subs, TestingSink(out))
    run_main(flow)
    return out


def add_event(**fields: Any) -> Delivery:
    base: dict[str, Any] = {"type": "member_added", "room_id": "r1", "room_name": "deal team", "accounts": ["bob"], "site_id": "s1", "joined_at": 1_000, "timestamp": 1_001}
    base.update(fields)
    event = MemberAddEvent(**base)
    envelope = OutboxEvent(type="member_added", site_id="s1", dest_site_id="s2", payload=encode_event(event), timestamp=1_002)
    return delivery("chat.inbox.s2.aggregate.member_added", encode_envelope(envelope))


def flat(doc: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in doc.items() if k != "u"}, **{f"u.{k}": v for k, v in doc["u"].items()}}


def matches_filter(subject: str, pattern: str) -> bool:
    s, p = subject.split("."), pattern.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(s) == len(p)


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector_inbox_mirror_expectation(path: Path) -> None:
    vector = json.loads(path.read_text())
    expect = vector["expect"].get("inboxMirror")
    env = vector["envelope"]
    inbox_filter = next(c for c in site_consumers(env["destSiteId"]) if c.durable == names.INBOX_WORKER_DURABLE).filter_subjects
    if vector["subject"].startswith("chat.inbox."):  # local lane: the durable never sees it
        assert expect is None or "not consumed" in str(expect)
        assert not any(matches_filter(vector["subject"], f) for f in inbox_filter)
        return
    subject = subjects.inbox_aggregate(env["destSiteId"], env["type"])
    assert any(matches_filter(subject, f) for f in inbox_filter)
    if isinstance(expect, dict):  # removals: every listed account ends absent, whatever was there before
        dels = [c for c in mirror.decode(delivery(subject, vector["data"].encode(), origin=env["siteId"])) if isinstance(c, mirror.Change)]
        earlier = [mirror.Change(ack=c.ack, kind=mirror.Kind.ADD, room_id=c.room_id, account=c.account, ts=c.ts - 1) for c in dels]
        assert {c.account for c in dels} == {a for a, state in expect.items() if state == "absent"}
        assert mirror.oracle(earlier + dels) == set()
        return
    docs = [flat(d) for d in shaped([delivery(subject, vector["data"].encode(), origin=env["siteId"])])]
    assert len(docs) == len(expect)
    for doc, want in zip(docs, expect, strict=True):
        assert {k: doc.get(k, "<absent>") for k in want} == want
        assert doc["u.account"] in vector["inner"]["accounts"]
        assert doc["siteId"] == vector["inner"]["siteId"]
        assert doc["joinedAt"] == vector["inner"]["joinedAt"]
        assert ("historySharedSince" in doc) == ("historySharedSince" in vector["inner"])


def test_channel_two_accounts_from_event_alone() -> None:
    docs = shaped([add_event(accounts=["bob", "carol"], room_type="channel", requester_account="alice")])
    assert [(d["u"]["account"], d["u"]["_id"], d["name"], d["roles"], d["roomType"], d["siteId"], d["joinedAt"]) for d in docs] == [
        ("bob", "id-bob", "deal team", ["member"], "channel", "s1", 1_000),
        ("carol", "id-carol", "deal team", ["member"], "channel", "s1", 1_000),
    ]
    assert all(d["isSubscribed"] is False and "historySharedSince" not in d for d in docs)


def test_empty_room_type_is_channel() -> None:
    (doc,) = shaped([add_event()])
    assert (doc["roomType"], doc["name"], doc["roles"]) == ("channel", "deal team", ["member"])


def test_dm_is_named_after_the_requester() -> None:
    (doc,) = shaped([add_event(room_name="", room_type="dm", requester_account="alice")])
    assert (doc["roomType"], doc["name"], doc["roles"], doc["isSubscribed"], doc["siteId"]) == ("dm", "alice", None, False, "s1")


@pytest.mark.parametrize(
    ("account", "requester", "is_bot", "subscribed"),
    [("helper.bot", "alice", True, False), ("p_assistant", "alice", True, False), ("alice", "helper.bot", False, True), ("bob", "p_x", False, True)],
    ids=["dot-bot", "p-prefix-bot", "human-of-bot-dm", "human-p-prefixed-bot"],
)
def test_bot_dm_subscribed_only_for_the_human(account: str, requester: str, is_bot: bool, subscribed: bool) -> None:
    (doc,) = shaped([add_event(room_name="", room_type="botDM", accounts=[account], requester_account=requester)])
    assert (doc["name"], doc["roles"], doc["u"]["isBot"], doc["isSubscribed"]) == (requester, None, is_bot, subscribed)


@pytest.mark.parametrize(("hss", "stored"), [(None, None), (0, None), (-5, None), (1_000, 1_000)], ids=["absent", "zero", "negative", "positive"])
def test_history_shared_since_only_when_positive(hss: int | None, stored: int | None) -> None:
    fields = {} if hss is None else {"history_shared_since": hss}
    (doc,) = shaped([add_event(**fields)])
    assert doc.get("historySharedSince") == stored


def test_discussion_is_named_after_the_room_with_no_roles() -> None:
    """SYSTEM.md §4: a discussion is named like a channel but, as in the reference, gets `roles: null`."""
    (doc,) = shaped([add_event(room_name="launch thread", room_type="discussion", requester_account="alice")])
    assert (doc["roomType"], doc["name"], doc["roles"], doc["isSubscribed"], doc["siteId"]) == ("discussion", "launch thread", None, False, "s1")
