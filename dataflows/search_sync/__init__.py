"""search_sync: reads member and rename events from `INBOX_{site}`, writes the Elasticsearch user-room and spotlight views."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors import runtime
from connectors.jetstream import JetStreamSource, SettleSink
from connectors.operators import PartOutcome, collect_for, decode_or_dead_letter, settle_parts
from connectors.settings import Settings
from dataflows.search_sync import indexes, writer
from dataflows.search_sync import parts as search_parts
from schemas import names, subjects
from schemas.carriers import Delivery, Settle

FLOW = names.SEARCH_SYNC_FLOW

Writer = Callable[[list[tuple[str, list[object]]]], list[PartOutcome]]


def build_flow(source: Source[Delivery], write: Writer, sink: Sink[Settle], *, flush: timedelta, flush_max: int) -> Dataflow:
    """The graph; `write` performs one guarded bulk per batch of coalesced parts (writer.py)."""
    flow = Dataflow(FLOW)
    msgs = op.input("pull", flow, source)
    decoded = decode_or_dead_letter("decode", msgs, search_parts.parse)  # one part per account (a rename: one), or poison
    keyed = op.key_on("key_by_doc", decoded.parts, search_parts.part_key)
    # a document's changes meet on one worker and are written once per flush (FINDINGS: same-doc bulk updates are slow)
    batches = collect_for("coalesce", keyed, flush, flush_max)
    outcomes = op.flat_map_batch("write_es", batches, write)
    settled = settle_parts("join_parts", decoded.awaiting, outcomes)  # ack only when every part's write is durable: SYSTEM.md §5
    op.output("settle", op.merge("all_settled", settled, decoded.settled), sink)  # poison: dead-letter, then ack
    return flow


def from_settings(settings: Settings) -> Dataflow:
    """The flow wired to the servers the `CHATFED_*` settings name; installs templates and aliases first if missing."""
    views_indexes = indexes.SearchIndexes.for_site(settings.require_elastic(), settings.site)
    search_writer = writer.SearchViewsWriter(settings.elastic, views_indexes, flow=FLOW, lanes=settings.tuning.write_lanes)
    indexes.ensure_installed(search_writer.es, views_indexes)
    return build_flow(
        JetStreamSource(
            settings.nats,
            settings.tuning,
            stream=names.inbox_stream(settings.site),
            durable=settings.durable or names.SEARCH_SYNC_DURABLE,
            # all that piled up during a write enters at once, so a backlog is written in big coalesced batches
            max_batch=settings.tuning.max_buffered,
        ),
        search_writer.write,
        SettleSink(settings.nats, settings.tuning, flow=FLOW, dlq_subject=subjects.dlq(settings.site, FLOW)),
        flush=timedelta(milliseconds=settings.tuning.flush_ms),
        flush_max=settings.tuning.flush_max,
    )


__getattr__ = runtime.flow_attribute(FLOW, from_settings)
