"""room_worker that dies (exit status 137, like kill -9) between an outcome's writes and its publishes.

Run as `python -m bytewax.run testkit.crashing_room_worker` with the same environment as `dataflows.room_worker`:
the same flow, durable and settings, over a store that ends the process after writing any outcome that has
events or notices to publish. Test-only: production code carries no crash hook.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Final, cast

from bytewax.dataflow import Dataflow

from connectors import runtime
from connectors.settings import Settings
from dataflows import room_worker
from dataflows.room_worker.outcomes import Outcome
from dataflows.room_worker.store import Store
from dataflows.room_worker.store_mongo import RoomStore

log = logging.getLogger(__name__)

KILLED: Final = 137  # what a shell reports for kill -9


class CrashAfterWrites:
    """`store` as it is, except that a write of an outcome with events is the process's last act."""

    def __init__(self, store: RoomStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def apply(self, outcome: Outcome, now_ms: int) -> None:
        self._store.apply(outcome, now_ms)
        if outcome.publishes or outcome.notices:
            self._die(f"the writes of {outcome.request_key}")

    def apply_many(self, outcomes: Sequence[Outcome], now_ms: int) -> None:
        self._store.apply_many(outcomes, now_ms)
        if any(o.publishes or o.notices for o in outcomes):
            self._die(f"a round's writes ({len(outcomes)} rooms)")

    @staticmethod
    def _die(after: str) -> None:
        log.error("dying after %s, before their publishes", after)
        os._exit(KILLED)


def wrap(store: RoomStore) -> Store:
    return cast(Store, CrashAfterWrites(store))


def from_settings(settings: Settings) -> Dataflow:
    return room_worker.from_settings(settings, wrap_store=wrap)


__getattr__ = runtime.flow_attribute(room_worker.FLOW, from_settings)
