"""Work in progress keeps its messages: `+WPI` before their ack wait runs out, so a slow store causes no redelivery.

Without it a batch that outlasts `ack_wait` (a slow store, a long backlog in the source's buffer) has its
messages redelivered while they are still being worked on: copies pile up behind the originals and the
consumer's ack floor stands still (issue 10, item 2). A message is held while it waits in the source's
buffer and while a write step works on it; a held message older than a third of the ack wait gets a
`+WPI`, which restarts its ack wait. Holding stops after `HOLD_LIMIT` ack waits, so a wedged flow still
lets JetStream redeliver its messages elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

from nats.aio.client import Client

from connectors import metrics, natsio
from schemas.carriers import Delivery

log = logging.getLogger(__name__)

HOLD_LIMIT: Final = 5  # ack waits
T = TypeVar("T")
R = TypeVar("R")


class InProgress:
    """The messages this process works on, and the `+WPI` heartbeat that keeps them from being redelivered."""

    def __init__(self, client: Client, ack_wait_s: float, *, flow: str) -> None:
        self._client = client
        self._flow = flow
        self._interval_s = max(ack_wait_s / 3, 0.2)
        self._limit_s = ack_wait_s * HOLD_LIMIT
        self._lock = threading.Lock()
        # reply -> [delivered or last +WPI (epoch s), first delivered (epoch s), holders]
        self._held: dict[str, list[float]] = {}
        self._beat = asyncio.run_coroutine_threadsafe(self._keep_beating(), natsio.loop())

    def hold(self, deliveries: Iterable[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                entry = self._held.get(delivery.reply)
                if entry is None:
                    received = delivery.received_ms / 1000 or time.time()
                    self._held[delivery.reply] = [received, received, 1]
                else:
                    entry[2] += 1

    def release(self, deliveries: Iterable[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                entry = self._held.get(delivery.reply)
                if entry is None:
                    continue
                entry[2] -= 1
                if entry[2] <= 0:
                    del self._held[delivery.reply]

    @contextmanager
    def holding(self, deliveries: Iterable[Delivery]) -> Iterator[None]:
        held = list(deliveries)
        self.hold(held)
        try:
            yield
        finally:
            self.release(held)

    def wrap(self, step: Callable[[T], R], deliveries_of: Callable[[T], Iterable[Delivery]]) -> Callable[[T], R]:
        """`step` with the deliveries of its argument held while it runs."""

        def held_step(batch: T) -> R:
            with self.holding(deliveries_of(batch)):
                return step(batch)

        return held_step

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def _due(self, now: float) -> list[str]:
        due: list[str] = []
        with self._lock:
            for reply, entry in list(self._held.items()):
                if now - entry[1] > self._limit_s:
                    log.warning("%s: held a message for over %d s; letting JetStream redeliver it", self._flow, self._limit_s)
                    del self._held[reply]
                elif now - entry[0] >= self._interval_s:
                    entry[0] = now
                    due.append(reply)
        return due

    async def _keep_beating(self) -> None:
        tick = min(1.0, self._interval_s / 2)
        while True:
            await asyncio.sleep(tick)
            due = self._due(time.time())
            if not due or not self._client.is_connected:
                continue
            for reply in due:
                await self._client.publish(reply, b"+WPI")
            metrics.IN_PROGRESS_ACKS.labels(self._flow).inc(len(due))

    def close(self) -> None:
        self._beat.cancel()


_shared: dict[int, InProgress] = {}
_shared_lock = threading.Lock()


def shared(client: Client, ack_wait_s: float, *, flow: str) -> InProgress:
    """The process's `InProgress` for `client` (the source and the write steps share one heartbeat)."""
    with _shared_lock:
        found = _shared.get(id(client))
        if found is None:
            found = _shared[id(client)] = InProgress(client, ack_wait_s, flow=flow)
        return found


def deliveries_in(batches: Iterable[object]) -> Iterator[Delivery]:
    """Every `Delivery` of a write step's input: items or lists of items carrying one as `.delivery`, keyed or not."""
    for item in batches:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            item = item[1]  # (key, value)
        if isinstance(item, list | tuple):
            yield from deliveries_in(item)
            continue
        delivery = getattr(item, "delivery", None)
        if isinstance(delivery, Delivery):
            yield delivery
