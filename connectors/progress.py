"""Work in progress keeps its messages: `+WPI` before their ack wait runs out, so a slow store causes no redelivery.

Without it a batch that outlasts `ack_wait` (a slow store, a long backlog waiting its turn) has its
messages redelivered while they are still being worked on: copies pile up behind the originals and the
consumer's ack floor stands still (issue 10, item 2). The process that pulled a message holds it from
its arrival until it is settled (acked, nak'd or dead-lettered), wherever that happens: a settle in
another process of the cluster sends this one a release notice on its `holder` subject. A held message
gets a `+WPI` (which restarts its ack wait) every third of the ack wait. Holding stops after
`HOLD_LIMIT` ack waits, so a wedged process (or a lost notice) lets JetStream redeliver.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg

from connectors import metrics, natsio
from schemas.carriers import Delivery
from schemas.subjects import RELEASE_PREFIX

log = logging.getLogger(__name__)

HOLD_LIMIT: Final = 5  # ack waits


class InProgress:
    """The messages this process pulled and not yet settled, and the `+WPI` heartbeat that keeps them."""

    def __init__(self, client: Client, ack_wait_s: float, *, flow: str) -> None:
        self._client = client
        self.flow = flow
        self._interval_s = max(ack_wait_s / 3, 0.2)
        self._limit_s = ack_wait_s * HOLD_LIMIT
        self._lock = threading.Lock()
        self._held: dict[str, tuple[float, float]] = {}  # reply -> (last touched, first received), epoch s
        self.holder = f"{RELEASE_PREFIX}{uuid.uuid4().hex}"
        natsio.run(client.subscribe(self.holder, cb=self._on_release), timeout=30)
        self._beat = asyncio.run_coroutine_threadsafe(self._keep_beating(), natsio.loop())

    def hold(self, delivery: Delivery) -> None:
        received = delivery.received_ms / 1000 or time.time()
        with self._lock:
            self._held[delivery.reply] = (received, received)

    def release(self, replies: Iterable[str]) -> None:
        with self._lock:
            for reply in replies:
                self._held.pop(reply, None)

    async def settled(self, deliveries: Iterable[Delivery]) -> None:
        """Stop holding these: here, or by a notice to the process that pulled them (on the NATS loop)."""
        elsewhere: dict[str, list[str]] = {}
        for delivery in deliveries:
            if delivery.holder == self.holder or not delivery.holder:
                self.release([delivery.reply])
            else:
                elsewhere.setdefault(delivery.holder, []).append(delivery.reply)
        for holder, replies in elsewhere.items():
            await self._client.publish(holder, "\n".join(replies).encode())

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    async def _on_release(self, msg: Msg) -> None:
        self.release(msg.data.decode().split("\n"))

    def _due(self, now: float) -> list[str]:
        due: list[str] = []
        expired: list[str] = []
        with self._lock:
            for reply, (touched, received) in self._held.items():
                if now - received < self._interval_s:
                    break  # held in arrival order: this one and all after it are too young for a first +WPI
                if now - received > self._limit_s:
                    expired.append(reply)
                elif now - touched >= self._interval_s:
                    due.append(reply)
            for reply in expired:
                del self._held[reply]
            for reply in due:
                self._held[reply] = (now, self._held[reply][1])
        if expired:
            log.warning("%s: %d message(s) held over %d s: letting JetStream redeliver them", self.flow, len(expired), self._limit_s)
        return due

    async def _keep_beating(self) -> None:
        tick = min(1.0, self._interval_s / 2)
        while True:
            await asyncio.sleep(tick)
            metrics.IN_PROGRESS.labels(self.flow).set(self.held())
            due = self._due(time.time())
            if not due or not self._client.is_connected:
                continue
            for reply in due:
                await self._client.publish(reply, b"+WPI")
            metrics.IN_PROGRESS_ACKS.labels(self.flow).inc(len(due))


_shared: dict[int, InProgress] = {}
_shared_lock = threading.Lock()


def shared(client: Client, ack_wait_s: float, *, flow: str, names_flow: bool = False) -> InProgress:
    """The process's `InProgress` for `client`: the source holds, the settle sink releases.

    `names_flow`: `flow` is the flow's name (the sink knows it; the source only knows its durable), used in metrics.
    """
    with _shared_lock:
        found = _shared.get(id(client))
        if found is None:
            found = _shared[id(client)] = InProgress(client, ack_wait_s, flow=flow)
        if names_flow:
            found.flow = flow
        return found
