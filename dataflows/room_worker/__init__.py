"""room_worker: reads room commands from `ROOMS_{site}`, writes MongoDB and publishes membership events to INBOX and OUTBOX."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors import mongo, natsio, runtime
from connectors.jetstream import JetStreamSource, SettleSink
from connectors.operators import collect_for, decode_or_dead_letter
from connectors.settings import Settings
from dataflows.room_worker import commands as room_commands
from dataflows.room_worker.runner import RoomCommandRunner, mint_request_id
from dataflows.room_worker.store import Store
from dataflows.room_worker.store_mongo import RoomStore
from schemas import names, streams, subjects
from schemas.carriers import Delivery, Settle

FLOW = names.ROOM_WORKER_FLOW


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode(delivery: Delivery, site: str) -> list[room_commands.Command] | room_commands.Rejected:
    """A command is the message's one part; a rejected one is settled apart (it may owe its requester a result)."""
    parsed = room_commands.parse_command(delivery, site=site, mint_id=mint_request_id, now_ms=_now_ms())
    return [parsed] if room_commands.is_command(parsed) else parsed


def build_flow(
    source: Source[Delivery],
    runner: room_commands.CommandRunner,
    sink: Sink[Settle],
    *,
    site: str,
    order_window: timedelta,
    order_max: int,
) -> Dataflow:
    """The graph; `runner` does the I/O of each command (runner.py)."""
    flow = Dataflow(FLOW)
    msgs = op.input("pull", flow, source)
    decoded = decode_or_dead_letter("decode", msgs, lambda delivery: _decode(delivery, site))
    rejected = op.map("reject", decoded.settled, runner.reject)  # error result to the requester, then dead-letter
    keyed = op.key_on("key_by_room", decoded.parts, room_commands.room_key)
    # a room's commands meet on one worker and are sorted by stream sequence within the window
    in_order = op.key_rm("unkey", collect_for("order_by_room", keyed, order_window, order_max))
    applied = op.flat_map_batch("apply", in_order, runner.apply)  # writes, publishes, result
    op.output("settle", op.merge("settled", rejected, applied), sink)  # ack / delayed nak / DLQ
    return flow


def from_settings(settings: Settings, wrap_store: Callable[[RoomStore], Store] | None = None) -> Dataflow:
    """The flow wired to the servers the `CHATFED_*` settings name; creates the collections' indexes first.

    `wrap_store`: what the runner uses instead of the MongoDB store, given it (tests inject faults this way).
    """
    db = mongo.database(settings.require_mongo())
    mongo.ensure_indexes(db)
    mongo_store = RoomStore(db)
    # a request is answered from its record for as long as ROOMS can redeliver it, and a day more for client retries
    mongo_store.purge_records(_now_ms() - (streams.ROOMS_MAX_AGE_S + streams.DAY_S) * 1000)
    store = mongo_store if wrap_store is None else wrap_store(mongo_store)
    client = natsio.connection(settings.nats)
    runner = RoomCommandRunner(
        store, client, site=settings.site, max_deliver=settings.tuning.max_deliver, event_max_accounts=settings.tuning.event_max_accounts
    )
    return build_flow(
        JetStreamSource(settings.nats, settings.tuning, stream=names.rooms_stream(settings.site), durable=names.ROOM_WORKER_DURABLE),
        runner,
        SettleSink(settings.nats, settings.tuning, flow=FLOW, dlq_subject=subjects.dlq(settings.site, FLOW)),
        site=settings.site,
        order_window=timedelta(milliseconds=settings.tuning.flush_ms),
        order_max=settings.tuning.flush_max,
    )


__getattr__ = runtime.flow_attribute(FLOW, from_settings)
