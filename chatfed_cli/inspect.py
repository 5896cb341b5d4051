"""What `chatfed status` reports: each durable's backlog, each INBOX source's lag, each flow process."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from chatfed_cli.flows import FlowProc
from schemas import names
from schemas.names import FLOWS
from schemas.streams import site_consumers


class DurableStatus(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int
    exists: bool = True
    last_delivered_s: float | None = None  # seconds since the server last delivered a message
    last_acked_s: float | None = None  # seconds since the ack floor last moved

    @property
    def state(self) -> str:
        """`working` while anything is pending or unacknowledged (work in progress stays unacknowledged), else `drained`."""
        if not self.exists:
            return "missing"
        return "working" if self.pending or self.ack_pending else "drained"


class SourceStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    lag: int
    active_s: float | None
    error: str


class FlowStatus(msgspec.Struct, frozen=True, kw_only=True):
    flow: str
    processes: list[int]

    @property
    def alive(self) -> bool:
        return bool(self.processes)


class SiteStatus(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    durables: list[DurableStatus]
    sources: list[SourceStatus]
    flows: list[FlowStatus]


def _age_s(when: datetime | None) -> float | None:
    return None if when is None else max((datetime.now(timezone.utc) - when).total_seconds(), 0.0)


async def site_status(client: Client, site: str, procs: list[FlowProc]) -> SiteStatus:
    js = client.jetstream()
    durables: list[DurableStatus] = []
    for spec in site_consumers(site):
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            durables.append(DurableStatus(stream=spec.stream, durable=spec.durable, pending=0, ack_pending=0, redelivered=0, waiting=0, exists=False))
            continue
        durables.append(
            DurableStatus(
                stream=spec.stream,
                durable=spec.durable,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                waiting=info.num_waiting or 0,
                last_delivered_s=_age_s(info.delivered.last_active if info.delivered else None),
                last_acked_s=_age_s(info.ack_floor.last_active if info.ack_floor else None),
            )
        )
    sources: list[SourceStatus] = []
    try:
        inbox = await js.stream_info(names.inbox_stream(site))
        for source in inbox.sources or []:
            error = source.error
            sources.append(
                SourceStatus(
                    name=source.name,
                    lag=source.lag or 0,
                    active_s=(source.active / 1e9) if source.active is not None and source.active >= 0 else None,
                    error="" if not error else f"{error.get('code', '')} {error.get('description', '')}".strip(),
                )
            )
    except NotFoundError:
        pass  # not bootstrapped: the durables above already say so
    flows = [FlowStatus(flow=flow, processes=[p.pid for p in procs if p.site == site and p.flow == flow]) for flow in FLOWS]
    return SiteStatus(site=site, durables=durables, sources=sources, flows=flows)
