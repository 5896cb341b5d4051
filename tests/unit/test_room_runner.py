"""RoomCommandRunner under a store outage: retried in place, then the rest of the batch is nak'd at once."""

from __future__ import annotations

import json
import threading
from typing import Any, cast

from dataflows.room_worker.commands import Command, parse_command
from dataflows.room_worker.runner import ROOM_THREADS, RoomCommandRunner
from dataflows.room_worker.store import Store, StoreUnavailable
from schemas.carriers import Delivery, Verdict


class DownStore:
    """Every call fails as a store whose server is not there (store_mongo.py turns a refused connection into this); counts the attempts."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        def fail(*_: object, **__: object) -> None:
            with self._lock:
                self.calls += 1
            raise StoreUnavailable("AutoReconnect: connection refused")

        return fail


def command(seq: int, room: str, delivered: int = 1) -> Command:
    body = {"roomId": room, "users": ["bob"], "requesterAccount": "alice", "timestamp": seq}
    delivery = Delivery(
        subject="chat.room.canonical.s1.member.add", data=json.dumps(body).encode(), reply=f"r{seq}",
        stream="ROOMS_s1", stream_seq=seq, num_delivered=delivered,
    )
    parsed = parse_command(delivery, site="s1", mint_id=lambda: "id", now_ms=1)
    assert isinstance(parsed, Command)
    return parsed


def runner(store: DownStore) -> RoomCommandRunner:
    return RoomCommandRunner(cast(Store, store), cast(Any, None), site="s1", max_deliver=10, pauses=(0.0, 0.0))


def test_one_room_pays_the_retries_once_then_naks_the_rest() -> None:
    store = DownStore()
    settles = runner(store).apply([[command(seq, "r1") for seq in range(1, 21)]])
    assert [s.verdict for s in settles] == [Verdict.RETRY] * 20
    assert [s.delivery.stream_seq for s in settles] == list(range(1, 21))
    assert store.calls == 2 + 3  # the batch's user and intent lookups, the first command's three attempts, nothing for the 19 after it
    assert settles[1].reason.startswith("transient: outage")


def test_many_rooms_stop_after_the_rooms_already_running() -> None:
    store = DownStore()
    batches = [[command(seq, f"r{seq % 50}")] for seq in range(1, 201)]
    settles = runner(store).apply(batches)
    assert len(settles) == 200 and {s.verdict for s in settles} == {Verdict.RETRY}
    assert store.calls <= 2 + 3 * ROOM_THREADS  # the batch's user and intent lookups, then the rooms already running
