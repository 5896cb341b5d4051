"""inbox_mirror: reads the aggregate lane of `INBOX_{site}` (durable `inbox-worker`), writes MongoDB `subscriptions`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors import mongo, runtime
from connectors.jetstream import JetStreamSource, SettleSink
from connectors.operators import PartOutcome, collect_for, decode_or_dead_letter, settle_parts
from connectors.settings import Settings
from dataflows.inbox_mirror import rules as mirror
from dataflows.inbox_mirror.writer import FLOW, SubscriptionWriter
from schemas import names, subjects
from schemas.carriers import Delivery, Settle

Writer = Callable[[list[tuple[str, list[object]]]], list[PartOutcome]]


def build_flow(source: Source[Delivery], write: Writer, sink: Sink[Settle], *, flush: timedelta, flush_max: int) -> Dataflow:
    """The graph; `write` is one bulk MongoDB write per batch (writer.py)."""
    flow = Dataflow(FLOW)
    msgs = op.input("pull", flow, source)
    decoded = decode_or_dead_letter("decode", msgs, mirror.decode)  # one Change per (room, account), or poison / ignored / done
    keyed = op.key_on("key_by_room", decoded.parts, mirror.room_key)
    batches = collect_for("coalesce", keyed, flush, flush_max)
    outcomes = op.flat_map_batch("write_mongo", batches, write)  # guards, then subscriptions
    settled = settle_parts("join_parts", decoded.awaiting, outcomes)  # ack only once every part of a message is durable
    op.output("settle", op.merge("all_settled", decoded.settled, settled), sink)  # ack / delayed nak / DLQ
    return flow


def from_settings(settings: Settings) -> Dataflow:
    """The flow wired to the servers the `CHATFED_*` settings name."""
    writer = SubscriptionWriter.start(mongo.database(settings.require_mongo()))
    site = settings.site
    return build_flow(
        JetStreamSource(settings.nats, settings.tuning, stream=names.inbox_stream(site), durable=names.INBOX_WORKER_DURABLE),
        writer.write,
        SettleSink(settings.nats, settings.tuning, flow=FLOW, dlq_subject=subjects.dlq(site, FLOW)),
        flush=timedelta(milliseconds=settings.tuning.flush_ms),
        flush_max=settings.tuning.flush_max,
    )


__getattr__ = runtime.flow_attribute(FLOW, from_settings)
