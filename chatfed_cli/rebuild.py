"""Rebuild a site's search views from `INBOX_{site}` into new indexes, then swap the aliases atomically.

A temporary durable (deliver all) replays the stream into new concrete indexes reached through
temporary aliases, while the live search_sync keeps serving and updating the old ones. Once the
replay has caught up, one `_aliases` request moves every live alias to the new indexes; the replay
keeps running until it has drained whatever the live flow wrote to the old indexes just before the
swap (last-write-wins makes the overlap harmless), then the temporary pieces are removed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

import msgspec
from elasticsearch import Elasticsearch
from nats.js.client import JetStreamContext

from chatfed_cli.topology import REPO
from connectors import elastic, natsio
from connectors.bootstrap import ensure_consumer, tuned_consumers
from connectors.settings import ElasticSettings, NatsSettings, elastic_variables, load_tuning
from dataflows.search_sync import indexes
from schemas import names

Progress = Callable[[int, int], None]


class RebuildError(RuntimeError):
    """The replay flow died or did not catch up in time; the live indexes were left untouched."""


class RebuildReport(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    events: int
    documents: int
    fill_seconds: float
    new_indexes: dict[str, str]  # alias -> new concrete index

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.fill_seconds if self.fill_seconds > 0 else 0.0


async def _backlog(js: JetStreamContext, site: str, durable: str) -> tuple[int, int]:
    info = await js.consumer_info(names.inbox_stream(site), durable)
    return int(info.num_pending or 0), int(info.num_ack_pending or 0)


async def _wait_caught_up(
    js: JetStreamContext, site: str, durable: str, flow: subprocess.Popen[bytes], total: int, progress: Progress, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if flow.poll() is not None:
            raise RebuildError(f"the replay flow exited with {flow.returncode}; see its log")
        pending, ack_pending = await _backlog(js, site, durable)
        progress(max(total - pending - ack_pending, 0), total)
        if pending == 0 and ack_pending == 0:
            return
        if time.monotonic() > deadline:
            raise RebuildError(f"replay not caught up after {timeout:.0f}s ({pending} pending, {ack_pending} unacked)")
        await asyncio.sleep(0.2)


def _count(es: Elasticsearch, names: list[str]) -> int:
    es.indices.refresh(index=",".join(names))
    return sum(int(es.count(index=index)["count"]) for index in names)


async def _rebuild(
    *, site: str, nats_settings: NatsSettings, es: Elasticsearch, live: indexes.SearchIndexes,
    flow_env: Mapping[str, str], progress: Progress, keep_old: bool, timeout: float,
) -> RebuildReport:
    stamp = time.strftime("%Y%m%d%H%M%S")
    staging = {alias: f"rebuild-{stamp}-{alias}" for alias in live.aliases}
    durable = f"search-rebuild-{stamp}"
    indexes.install(es, live)  # templates (matching `{alias}-v*`) and the live aliases exist
    # live alias -> its new index, filled through the staging alias
    targets = {alias: indexes.create_version(es, alias, stamp, write_alias=staging[alias]) for alias in live.aliases}

    client = await natsio.connect(nats_settings, name="chatfed-rebuild")
    js = client.jetstream()
    spec = next(c for c in tuned_consumers(site, load_tuning(flow_env)) if c.durable == names.SEARCH_SYNC_DURABLE)
    await ensure_consumer(js, msgspec.structs.replace(spec, durable=durable, deliver_all=True))
    total = sum(await _backlog(js, site, durable))
    env = dict(flow_env) | {
        "CHATFED_DURABLE": durable,
        "CHATFED_USER_ROOM_INDEX": staging[live.user_room],
        "CHATFED_SPOTLIGHT_INDEX": staging[live.spotlight],
        "CHATFED_ROOM_NAMES_INDEX": staging[live.room_names],
    }
    log_dir = REPO / ".local" / "logs" / "flows"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"rebuild-{site}-{stamp}.log", "ab") as log:
        flow = subprocess.Popen(  # noqa: S603 - our interpreter, our flow
            [sys.executable, "-m", "bytewax.run", names.flow_module(names.SEARCH_SYNC_FLOW)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    swapped = False
    try:
        started = time.monotonic()
        await _wait_caught_up(js, site, durable, flow, total, progress, timeout)
        fill_seconds = time.monotonic() - started
        documents = _count(es, [targets[live.user_room], targets[live.spotlight]])
        old = indexes.swap_aliases(es, targets)
        swapped = True
        # the live flow may have written to the old indexes until the swap: replay that tail too
        await asyncio.sleep(0.5)
        await _wait_caught_up(js, site, durable, flow, total, lambda done, all_: None, timeout)
    finally:
        if flow.poll() is None:
            flow.send_signal(signal.SIGTERM)  # the flow maps SIGTERM to a clean stop
            try:
                flow.wait(30)
            except subprocess.TimeoutExpired:
                flow.kill()
                flow.wait()
        await js.delete_consumer(names.inbox_stream(site), durable)
        await client.close()
        indexes.drop_aliases(es, {staging[alias]: targets[alias] for alias in live.aliases})
        if not swapped:  # the live indexes are untouched; drop the half-filled new ones
            indexes.delete_indexes(es, targets.values())
    if not keep_old:
        indexes.delete_indexes(es, old)
    return RebuildReport(site=site, events=total, documents=documents, fill_seconds=fill_seconds, new_indexes=targets)


def rebuild_site(
    *, site: str, nats_settings: NatsSettings, elastic_settings: ElasticSettings, flow_env: Mapping[str, str],
    progress: Progress = lambda done, total: None, keep_old: bool = False, timeout: float = 1800,
) -> RebuildReport:
    """Rebuild `site`'s user-room, spotlight and room-names indexes from its INBOX stream, without downtime."""
    es = elastic.elastic_client(elastic_settings)
    live = indexes.SearchIndexes.for_site(elastic_settings, site)
    flow_env = dict(flow_env) | elastic_variables(elastic_settings)  # the replay writes staging aliases: the operator's work
    return asyncio.run(
        _rebuild(site=site, nats_settings=nats_settings, es=es, live=live, flow_env=flow_env, progress=progress, keep_old=keep_old, timeout=timeout)
    )
