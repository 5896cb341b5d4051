"""inbox_mirror's graph under bytewax.testing: one verdict per message, after all of its parts were written."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import timedelta

import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from connectors.operators import PartOutcome
from dataflows.inbox_mirror import build_flow
from dataflows.inbox_mirror.rules import Change, decode, subscription_of
from schemas.carriers import Delivery, Settle
from schemas.envelope import OutboxEvent, encode_envelope
from schemas.events import MemberAddEvent, encode_event
from schemas.membership import subscription_from_event

SOURCED = {"Nats-Stream-Source": "OUTBOX_s1 1 outbox.s1.to.s2.> chat.inbox.s2.aggregate.> outbox.s1.to.s2.x"}


def add(seq: int, accounts: list[str], room: str = "r1") -> Delivery:
    return add_event(MemberAddEvent(type="member_added", room_id=room, room_name="n", accounts=accounts, site_id="s1", joined_at=1, timestamp=seq))


def add_event(event: MemberAddEvent) -> Delivery:
    seq = event.timestamp
    data = encode_envelope(OutboxEvent(type="member_added", site_id="s1", dest_site_id="s2", payload=encode_event(event), timestamp=seq))
    return Delivery(subject="chat.inbox.s2.aggregate.member_added", data=data, reply=f"reply-{seq}", stream="INBOX_s2", stream_seq=seq, num_delivered=1, headers=SOURCED)


def unknown(seq: int) -> Delivery:
    data = encode_envelope(OutboxEvent(type="room_sync", site_id="s1", dest_site_id="s2", payload=b"{}", timestamp=seq))
    return Delivery(subject="chat.inbox.s2.aggregate.room_sync", data=data, reply=f"reply-{seq}", stream="INBOX_s2", stream_seq=seq, num_delivered=1, headers=SOURCED)


def writer_failing(accounts: set[str], batches: list[int]) -> Callable[[list[tuple[str, list[object]]]], list[PartOutcome]]:
    """A writer that records batch sizes and fails the parts of `accounts` (the store itself is tested in integration)."""

    def write(batch: list[tuple[str, list[object]]]) -> list[PartOutcome]:
        parts = [c for _, items in batch for c in items if isinstance(c, Change)]
        batches.append(len(parts))
        return [PartOutcome(ack=c.ack, ok=c.account not in accounts, reason=f"unknown {c.account}") for c in parts]

    return write


def verdicts(runner: Callable[[Dataflow], None]) -> tuple[dict[str, tuple[str, str, bool]], list[int]]:
    out: list[Settle] = []
    batches: list[int] = []
    items = [add(1, ["a", "b", "c"]), add(2, ["d", "ghost"], room="r2"), unknown(3), add(4, []), add(5, ["e"], room="r3")]
    items.append(Delivery(subject="s", data=b"{", reply="reply-6", stream="INBOX_s2", stream_seq=6, num_delivered=1))
    flow = build_flow(TestingSource(items), writer_failing({"ghost"}, batches), TestingSink(out), flush=timedelta(milliseconds=5), flush_max=100)
    runner(flow)
    return {s.delivery.reply: (s.verdict.value, s.reason, s.ignored) for s in out}, batches


RUNNERS = {"run_main": run_main, "cluster_2_workers": lambda flow: cluster_main(flow, [], 0, worker_count_per_proc=2)}


@pytest.mark.parametrize("runner", list(RUNNERS.values()), ids=list(RUNNERS))
def test_one_verdict_per_message(runner: Callable[[Dataflow], None]) -> None:
    got, batches = verdicts(runner)
    assert {k: v[0] for k, v in got.items()} == {
        "reply-1": "ack",  # all three parts written
        "reply-2": "retry",  # one part failed: the whole message is retried
        "reply-3": "ack",  # unknown type: acked, nothing written
        "reply-4": "ack",  # no accounts: nothing to write
        "reply-5": "ack",
        "reply-6": "dead",  # undecodable: dead-lettered
    }
    assert got["reply-3"][1:] == ("unknown type 'room_sync'", True)  # counted by the settle sink
    assert [reply for reply, (_, _, ignored) in got.items() if ignored] == ["reply-3"]
    assert got["reply-2"][1] == "unknown ghost"
    assert sum(batches) == 6  # every part went through the writer exactly once


def test_a_change_carries_the_ack_handle_and_its_own_account_only() -> None:
    """A member_added for N accounts must not move N copies of the message or of its account list (issue 12)."""

    def largest_change(accounts: int) -> int:
        changes = decode(add(1, [f"u{i}" for i in range(accounts)]))
        assert isinstance(changes, list) and len(changes) == accounts
        return max(len(pickle.dumps(change)) for change in changes)

    assert largest_change(2_000) <= largest_change(2) + 16  # only the account names grow: "u1999" against "u1"


def test_a_cut_add_shapes_the_same_subscription() -> None:
    event = MemberAddEvent(type="member_added", room_id="d", room_name="", room_type="dm", accounts=["a", "b"], site_id="s1", joined_at=1, timestamp=2)
    for change in decode(add_event(event)):  # type: ignore[union-attr]
        assert isinstance(change, Change)
        whole = subscription_from_event(event, account=change.account, user_id="u", sub_id="s")
        assert subscription_of(change, user_id="u", sub_id="s") == whole and whole.name == ({"a": "b", "b": "a"}[change.account])
