"""Stream and durable-consumer configurations of a site, as plain values (SYSTEM.md §1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from schemas import names, subjects
from schemas.envelope import EventType

MINUTE_S: Final = 60
DAY_S: Final = 24 * 60 * MINUTE_S

# dedup of Nats-Msg-Id works only inside this window: SYSTEM.md §2.4
DUPLICATE_WINDOW_S: Final = 5 * MINUTE_S
DLQ_DUPLICATE_WINDOW_S: Final = 2 * MINUTE_S  # the server's default, stated explicitly
ROOMS_MAX_AGE_S: Final = 7 * DAY_S
OUTBOX_MAX_AGE_S: Final = 7 * DAY_S
INBOX_MAX_AGE_S: Final = 30 * DAY_S  # a search index rebuild replays it
DLQ_MAX_AGE_S: Final = 30 * DAY_S

# defaults only: bootstrap takes both from the flows' settings (CHATFED_ACK_WAIT_S, CHATFED_MAX_DELIVER), and a
# flow refuses a durable whose values differ from its own (a lower max_deliver strands its failures un-acked)
ACK_WAIT_S: Final = 60
# with the settle sink's backoff (0.5 s doubling to 30 s) 20 deliveries ride out a store outage of about 7 minutes
# before a message is dead-lettered; 10 gave 2.5 minutes, less than a loaded Elasticsearch needs to restart
MAX_DELIVER: Final = 20
# a member event lists at most this many accounts (room_worker splits bigger ones): far below the server's
# 1 MB max payload even for long account names (CHATFED_EVENT_MAX_ACCOUNTS)
EVENT_MAX_ACCOUNTS: Final = 1_000
ROOM_WORKER_MAX_ACK_PENDING: Final = 1_000
# must exceed what a batching pipeline holds between pull and ack: FINDINGS
INBOX_MAX_ACK_PENDING: Final = 20_000

SEARCH_SYNC_EVENT_TYPES: Final = (
    EventType.MEMBER_ADDED.value,
    EventType.MEMBER_REMOVED.value,
    EventType.ROOM_RENAMED.value,
)


class SourceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One stream source bound to the origin's durable `durable` (which filters), with a subject transform."""

    name: str
    external_api_prefix: str  # `$JS.{origin}.API`; a one-server test layout may ignore it
    transform_src: str
    transform_dest: str
    # the origin's durable on its OUTBOX and where it delivers (`fed.deliver.{origin}.to.{dest}.durable`): the
    # destination only binds to it (a consumer reset), so it never chooses a filter or a deliver subject itself,
    # and the leafnode permissions let only the origin publish deliveries a destination accepts as sourced
    durable: str
    deliver_subject: str


class SourceConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The durable a site creates on its own OUTBOX for one destination to source through (flow-control acks)."""

    stream: str
    durable: str
    filter_subject: str
    deliver_subject: str


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A JetStream stream to create or update."""

    name: str
    subjects: list[str]
    duplicate_window_s: int
    max_age_s: int
    sources: list[SourceSpec] = msgspec.field(default_factory=list)


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A durable pull consumer with explicit ack; an empty filter list means every subject."""

    stream: str
    durable: str
    filter_subjects: list[str]
    ack_wait_s: int
    max_deliver: int
    max_ack_pending: int
    deliver_all: bool = True  # a new durable replays the stream: that is how an index is rebuilt


def inbox_sources(site: str, all_sites: Iterable[str]) -> list[SourceSpec]:
    """One source per other site: `outbox.{origin}.to.{site}.>` → `chat.inbox.{site}.aggregate.>`."""
    sources: list[SourceSpec] = []
    seen = {site}
    for origin in all_sites:
        if origin in seen:
            continue
        seen.add(origin)
        sources.append(
            SourceSpec(
                name=names.outbox_stream(origin),
                external_api_prefix=subjects.jetstream_api_prefix(origin),
                transform_src=subjects.outbox_to_filter(origin=origin, dest=site),
                transform_dest=subjects.inbox_aggregate_filter(site),
                durable=names.outbox_source_durable(site),
                deliver_subject=subjects.source_deliver_subject(origin=origin, dest=site),
            )
        )
    return sources


def outbox_source_consumers(site: str, all_sites: Iterable[str]) -> list[SourceConsumerSpec]:
    """The durables `site` keeps on its OUTBOX, one per other site, each filtered to that site's lane: what
    `inbox_sources` of the other sites bind to."""
    dests = [d for d in dict.fromkeys(all_sites) if d != site]
    return [
        SourceConsumerSpec(
            stream=names.outbox_stream(site),
            durable=names.outbox_source_durable(dest),
            filter_subject=subjects.outbox_to_filter(origin=site, dest=dest),
            deliver_subject=subjects.source_deliver_subject(origin=site, dest=dest),
        )
        for dest in dests
    ]


def site_streams(site: str, all_sites: Iterable[str]) -> list[StreamSpec]:
    """ROOMS, OUTBOX, INBOX (sourcing every other site's OUTBOX) and DLQ of `site`."""
    return [
        StreamSpec(
            name=names.rooms_stream(site),
            subjects=[subjects.rooms_filter(site)],
            duplicate_window_s=DUPLICATE_WINDOW_S,
            max_age_s=ROOMS_MAX_AGE_S,
        ),
        StreamSpec(
            name=names.outbox_stream(site),
            subjects=[subjects.outbox_filter(site)],
            duplicate_window_s=DUPLICATE_WINDOW_S,
            max_age_s=OUTBOX_MAX_AGE_S,
        ),
        StreamSpec(
            name=names.inbox_stream(site),
            subjects=[subjects.inbox_local_filter(site), subjects.inbox_aggregate_filter(site)],
            duplicate_window_s=DUPLICATE_WINDOW_S,
            max_age_s=INBOX_MAX_AGE_S,
            sources=inbox_sources(site, all_sites),
        ),
        StreamSpec(
            name=names.dlq_stream(site),
            subjects=[subjects.dlq_filter(site)],
            duplicate_window_s=DLQ_DUPLICATE_WINDOW_S,
            max_age_s=DLQ_MAX_AGE_S,
        ),
    ]


def search_sync_filters(site: str) -> list[str]:
    """Return the six member/rename subjects `search-sync` reads, local lane first."""
    local = [subjects.inbox_local(site, t) for t in SEARCH_SYNC_EVENT_TYPES]
    aggregate = [subjects.inbox_aggregate(site, t) for t in SEARCH_SYNC_EVENT_TYPES]
    return local + aggregate


def site_consumers(site: str, *, ack_wait_s: int = ACK_WAIT_S, max_deliver: int = MAX_DELIVER) -> list[ConsumerSpec]:
    """Return the durables `room-worker`, `inbox-worker` and `search-sync` of `site`."""
    return [
        ConsumerSpec(
            stream=names.flow_stream(site, names.ROOM_WORKER_FLOW),
            durable=names.ROOM_WORKER_DURABLE,
            filter_subjects=[],
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=ROOM_WORKER_MAX_ACK_PENDING,
        ),
        ConsumerSpec(
            stream=names.flow_stream(site, names.INBOX_MIRROR_FLOW),
            durable=names.INBOX_WORKER_DURABLE,
            filter_subjects=[subjects.inbox_aggregate_filter(site)],
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=INBOX_MAX_ACK_PENDING,
        ),
        ConsumerSpec(
            stream=names.flow_stream(site, names.SEARCH_SYNC_FLOW),
            durable=names.SEARCH_SYNC_DURABLE,
            filter_subjects=search_sync_filters(site),
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=INBOX_MAX_ACK_PENDING,
        ),
    ]


def flow_consumer(site: str, flow: str) -> ConsumerSpec:
    """The durable `flow` reads on `site`, with the default settings."""
    durable = names.FLOW_DURABLES[flow]
    return next(spec for spec in site_consumers(site) if spec.durable == durable)
