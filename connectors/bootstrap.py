"""Create or update a site's streams, sources and durable consumers, then verify them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamConsumerSource,
    StreamInfo,
    StreamSource,
    SubjectTransform,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from connectors.errors import ConfigError
from connectors.settings import Tuning, tuning_variable
from schemas.names import outbox_stream as outbox_name
from schemas.streams import (
    ConsumerSpec,
    SourceConsumerSpec,
    SourceSpec,
    StreamSpec,
    outbox_source_consumers,
    site_consumers,
    site_streams,
)

log = logging.getLogger(__name__)


class BootstrapError(RuntimeError):
    """A stream, source or consumer is missing or broken after bootstrap."""


class DurableMismatch(ConfigError):
    """A durable is missing, or its delivery contract differs from the flow's settings: never retried."""


def tuned_consumers(site: str, tuning: Tuning) -> list[ConsumerSpec]:
    """The durables of `site` with the flows' own `max_deliver` and `ack_wait` (one contract: SYSTEM.md §6)."""
    return site_consumers(site, ack_wait_s=tuning.ack_wait_s, max_deliver=tuning.max_deliver)


def contract_problems(stream: str, durable: str, config: ConsumerConfig, tuning: Tuning) -> list[str]:
    """How the durable's `config` differs from what a flow with `tuning` expects; empty when it matches."""
    problems = []
    for field, actual in (("max_deliver", config.max_deliver), ("ack_wait_s", config.ack_wait)):
        wanted = getattr(tuning, field)
        if actual is None or float(actual) != float(wanted):
            shown = "unset" if actual is None else f"{actual:g}"
            problems.append(f"durable {stream}/{durable} has {field}={shown} but {tuning_variable(field)}={wanted}")
    return problems


async def check_durable(js: JetStreamContext, stream: str, durable: str, tuning: Tuning) -> None:
    """Raise DurableMismatch unless `durable` exists with the delivery contract of `tuning`."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        raise DurableMismatch(f"durable {stream}/{durable} does not exist; run `chatfed bootstrap`") from None
    problems = contract_problems(stream, durable, info.config, tuning)
    if problems:
        msg = "; ".join(problems) + "; run `chatfed bootstrap` with the flows' settings"
        raise DurableMismatch(msg)


def _source_config(spec: SourceSpec, federated: bool) -> StreamSource:
    # bound to the origin's durable (ADR-60 durable sourcing, nats-server 2.14+): the destination only resets it, so its
    # filter and deliver subject are the origin's choice; the transform renames the lane (no filter_subject with it)
    external = federated and bool(spec.external_api_prefix)
    return StreamSource(
        name=spec.name,
        external=ExternalStream(api=spec.external_api_prefix) if external else None,
        subject_transforms=[SubjectTransform(src=spec.transform_src, dest=spec.transform_dest)],
        consumer=StreamConsumerSource(name=spec.durable, deliver_subject=spec.deliver_subject),
    )


# a source durable acks through flow control: heartbeat exactly 1 s, no ack wait or max deliver (the server checks)
SOURCE_HEARTBEAT_S = 1.0
SOURCE_MAX_ACK_PENDING = 10_000


def source_consumer_config(spec: SourceConsumerSpec) -> ConsumerConfig:
    """The push durable a destination's INBOX sources through: everything from the start, the destination's lane only."""
    return ConsumerConfig(
        durable_name=spec.durable,
        deliver_subject=spec.deliver_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.FLOW_CONTROL,
        flow_control=True,
        idle_heartbeat=SOURCE_HEARTBEAT_S,
        max_ack_pending=SOURCE_MAX_ACK_PENDING,
        filter_subject=spec.filter_subject,
    )


def stream_config(spec: StreamSpec, *, federated: bool = True) -> StreamConfig:
    """nats-py config for `spec`; `federated=False` reads sources from the same server (tests)."""
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=float(spec.max_age_s),
        duplicate_window=float(spec.duplicate_window_s),
        sources=[_source_config(source, federated) for source in spec.sources] or None,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    filters = list(spec.filter_subjects)
    return ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL if spec.deliver_all else DeliverPolicy.NEW,
        ack_wait=float(spec.ack_wait_s),
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        max_waiting=512,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, *, federated: bool = True) -> StreamInfo:
    config = stream_config(spec, federated=federated)
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        return await js.add_stream(config)
    return await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    await js.add_consumer(spec.stream, consumer_config(spec))


async def ensure_source_consumer(js: JetStreamContext, spec: SourceConsumerSpec) -> None:
    await js.add_consumer(spec.stream, source_consumer_config(spec))


async def ensure_source_consumers(js: JetStreamContext, origin: str, dests: list[str]) -> None:
    """The durables `origin` keeps on its OUTBOX for `dests` only: a site joining a federation needs them on every peer
    (which is why bootstrap runs for every site of a federation)."""
    for spec in outbox_source_consumers(origin, [origin, *dests]):
        await ensure_source_consumer(js, spec)


async def verify_site(js: JetStreamContext, site: str, all_sites: list[str], *, tuning: Tuning | None = None, wait_s: float = 30) -> None:
    """Every stream present, every INBOX source present and not in error (sources may take a moment), every durable
    present with the flows' delivery contract. `wait_s`: a source is reported late on a loaded machine (seen past 10 s)."""
    tuning = tuning or Tuning()
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        problems: list[str] = []
        for spec in site_streams(site, all_sites):
            try:
                info = await js.stream_info(spec.name)
            except NotFoundError:
                problems.append(f"stream {spec.name} missing")
                continue
            present = {source.name: source for source in info.sources or []}
            if spec.name == outbox_name(site):
                for durable in outbox_source_consumers(site, all_sites):
                    try:
                        await js.consumer_info(durable.stream, durable.durable)
                    except NotFoundError:
                        problems.append(f"{spec.name}: source durable {durable.durable} missing")
            for source in spec.sources:
                found = present.get(source.name)
                if found is None:
                    problems.append(f"{spec.name}: source {source.name} not reported yet")
                elif found.error is not None:
                    problems.append(f"{spec.name}: source {source.name} error {found.error}")
        for consumer in site_consumers(site):
            try:
                info = await js.consumer_info(consumer.stream, consumer.durable)
            except NotFoundError:
                problems.append(f"consumer {consumer.stream}/{consumer.durable} missing")
                continue
            problems += contract_problems(consumer.stream, consumer.durable, info.config, tuning)
        if not problems:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise BootstrapError(f"site {site}: " + "; ".join(problems))
        await asyncio.sleep(0.25)


async def provision_sites(
    clients: Mapping[str, Client], all_sites: list[str], *, federated: bool = True, tuning: Tuning | None = None
) -> None:
    """Create or update the streams and durables of every site of `clients` (site -> a client of its server) without
    waiting for their sources (see `bootstrap_site`).

    Every site's OUTBOX and its source durables first, the INBOXes that bind to them last: a source bound before its
    durable exists stays in error until the server's next retry (10 s and more), longer than a verification waits.
    """
    tuning = tuning or Tuning()
    for site, client in clients.items():
        js = client.jetstream()
        for spec in site_streams(site, all_sites):
            if not spec.sources:
                await ensure_stream(js, spec, federated=federated)
        for durable in outbox_source_consumers(site, all_sites):
            await ensure_source_consumer(js, durable)
    for site, client in clients.items():
        js = client.jetstream()
        for spec in site_streams(site, all_sites):
            if spec.sources:
                await ensure_stream(js, spec, federated=federated)
        for consumer in tuned_consumers(site, tuning):
            await ensure_consumer(js, consumer)  # create or update: max_deliver and ack_wait may be edited in place


async def provision_site(
    client: Client, site: str, all_sites: list[str], *, federated: bool = True, tuning: Tuning | None = None
) -> None:
    """`provision_sites` for one site."""
    await provision_sites({site: client}, all_sites, federated=federated, tuning=tuning)


async def bootstrap_site(
    client: Client, site: str, all_sites: list[str], *, federated: bool = True, tuning: Tuning | None = None
) -> None:
    """Idempotently create or update everything `site` needs, then verify it.

    The durables take `max_deliver` and `ack_wait` from `tuning` (the flows' settings), updating existing ones.
    `federated=False` puts all sites on one server and sources them without the external API (tests).
    """
    tuning = tuning or Tuning()
    await provision_site(client, site, all_sites, federated=federated, tuning=tuning)
    await verify_site(client.jetstream(), site, all_sites, tuning=tuning)
    log.info("site %s: streams and consumers ready (max_deliver %d, ack_wait %d s)", site, tuning.max_deliver, tuning.ack_wait_s)
