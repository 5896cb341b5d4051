"""Rebuild a site's search views from `INBOX_{site}` into new indexes, then swap the aliases atomically.

`bulk` (the default): a temporary no-ack durable (deliver all) is read over a bare NATS connection
(nats_wire.py) in chunks, decoded by the flow's own `parts.parse` (on worker processes for big streams:
parse_pool.py) and folded in memory by the flow's own rules (dataflows/search_sync/fold.py); the documents are
bulk-loaded into new concrete indexes with refresh off and no replica, by plain index operations (nobody else
writes them yet), several bulks in flight (bulk_load.py). Rounds of fold-and-write follow until the live traffic
that arrived meanwhile is in, then the template's settings are restored, the indexes refreshed, and one `_aliases`
request moves every live alias to them. Whatever the live flow wrote to the old indexes just before the swap is in
the stream after our position: it is replayed through the live flow's guarded writer (last-write-wins makes the
overlap harmless), so nothing is lost.

`replay` (the old path, the benchmark's baseline): the normal guarded flow replays the stream into the new
indexes through temporary aliases, and keeps running after the swap until it has drained the tail.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import msgspec
from elasticsearch import Elasticsearch
from nats.js.client import JetStreamContext

from chatfed_cli import bulk_load
from chatfed_cli.parse_pool import Parsers, default_workers
from chatfed_cli.topology import REPO
from connectors import elastic, natsio
from connectors.bootstrap import ensure_consumer, tuned_consumers
from connectors.settings import ElasticSettings, NatsSettings, elastic_variables, load_tuning
from dataflows.search_sync import indexes
from dataflows.search_sync.fold import ViewsFold
from dataflows.search_sync.writer import SearchViewsWriter
from schemas import names

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


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


CATCH_UP_ROUNDS = 5  # unguarded fold-and-write rounds over the traffic that arrived during the fill
SMALL_ROUND = 2_000  # documents: a round this small means we are close behind the live flow
PARALLEL_FROM = 100_000  # messages in the stream from which decoding runs on worker processes too


async def _rebuild_bulk(
    *, site: str, nats_settings: NatsSettings, elastic_settings: ElasticSettings, es: Elasticsearch,
    live: indexes.SearchIndexes, flow_env: Mapping[str, str], progress: Progress, keep_old: bool, timeout: float,
    parse_workers: int | None,
) -> RebuildReport:
    stamp = time.strftime("%Y%m%d%H%M%S")
    indexes.install(es, live)  # templates (matching `{alias}-v*`) and the live aliases exist
    try:
        with ThreadPoolExecutor(len(live.aliases)) as pool:  # each create waits for its shard: side by side
            created = pool.map(lambda alias: indexes.create_version(es, alias, stamp, write_alias=None, settings=indexes.FILL_SETTINGS), live.aliases)
            targets = dict(zip(live.aliases, created))
    except Exception:
        indexes.delete_indexes(es, [f"{alias}-v{stamp}" for alias in live.aliases])  # those that were made
        raise
    target = indexes.SearchIndexes(user_room=targets[live.user_room], spotlight=targets[live.spotlight], room_names=targets[live.room_names])
    client = await natsio.connect(nats_settings, name="chatfed-rebuild")
    spec = next(c for c in tuned_consumers(site, load_tuning(flow_env)) if c.durable == names.SEARCH_SYNC_DURABLE)
    reader = bulk_load.StreamReader(client, nats_settings, msgspec.structs.replace(spec, durable=f"search-rebuild-{stamp}", deliver_all=True))
    parsers = Parsers(0)
    swapped = False
    try:
        if parse_workers is None:  # worker processes pay their start-up (~0.5 CPU-s each) back on big streams only
            stored = (await client.jetstream().stream_info(spec.stream)).state.messages
            parse_workers = default_workers() if stored >= PARALLEL_FROM else 0
        parsers = Parsers(parse_workers)
        await asyncio.gather(reader.open(), parsers.start())
        async with asyncio.timeout(timeout):
            total = await reader.pending()
            started = time.monotonic()
            fold = ViewsFold()
            for round_no in range(CATCH_UP_ROUNDS + 1):
                await reader.fold_all(fold, parsers, lambda events: progress(min(events, total), total))
                folded = time.monotonic()
                changes = fold.take()
                await asyncio.to_thread(bulk_load.bulk_write, es, changes, target)
                log.info("round %d: %d events folded by %.2fs, %d documents written in %.2fs",
                         round_no, reader.events, folded - started, changes.count, time.monotonic() - folded)
                if round_no > 0 and changes.count < SMALL_ROUND:
                    break  # close behind the live flow: what arrives from here on is a short tail
            indexes.restore_settings(es, live, targets)
            # the last unguarded round: what arrived while the settings were restored
            await reader.fold_all(fold, parsers)
            await asyncio.to_thread(bulk_load.bulk_write, es, fold.take(), target)
            documents = _count(es, [target.user_room, target.spotlight])  # refreshes them: searchable from here
            fill_seconds = time.monotonic() - started
            log.info("filled and refreshed in %.2fs (%d events, %d poison left out, %d decoding workers)",
                     fill_seconds, reader.events, reader.poison, parsers.workers)
            old = indexes.swap_aliases(es, targets)
            swapped = True
            # the live flow may have written events to the old indexes until the swap: they are all in the
            # stream after our position; from here on the new indexes are live, so only guarded writes
            tail = await reader.parts_until_caught_up()
            await asyncio.to_thread(bulk_load.replay_guarded, SearchViewsWriter(elastic_settings, live, flow="rebuild"), tail)
    except TimeoutError as exc:
        raise RebuildError(f"rebuild not done after {timeout:.0f}s") from exc
    finally:
        parsers.close()
        await reader.close()
        await client.close()
        if not swapped:  # the live indexes are untouched; drop the half-filled new ones
            indexes.delete_indexes(es, targets.values())
    if not keep_old:
        indexes.delete_indexes(es, old)
    return RebuildReport(site=site, events=reader.events, documents=documents, fill_seconds=fill_seconds, new_indexes=targets)


def rebuild_site(
    *, site: str, nats_settings: NatsSettings, elastic_settings: ElasticSettings, flow_env: Mapping[str, str],
    progress: Progress = lambda done, total: None, keep_old: bool = False, timeout: float = 1800, method: str = "bulk",
    parse_workers: int | None = None,
) -> RebuildReport:
    """Rebuild `site`'s user-room, spotlight and room-names indexes from its INBOX stream, without downtime.

    `method`: "bulk" (the default: fold in memory, bulk-load) or "replay" (the guarded flow replays the stream: the
    old path, kept as the benchmark's baseline). `parse_workers`: processes decoding messages for "bulk" (None: one
    per core; 0: decode in this process).
    """
    es = elastic.elastic_client(elastic_settings)
    live = indexes.SearchIndexes.for_site(elastic_settings, site)
    flow_env = dict(flow_env) | elastic_variables(elastic_settings)  # the replay writes staging aliases: the operator's work
    if method == "bulk":
        return asyncio.run(
            _rebuild_bulk(
                site=site, nats_settings=nats_settings, elastic_settings=elastic_settings, es=es, live=live, flow_env=flow_env,
                progress=progress, keep_old=keep_old, timeout=timeout, parse_workers=parse_workers,
            )
        )
    if method != "replay":
        raise ValueError(f"unknown rebuild method {method!r}")
    return asyncio.run(
        _rebuild(site=site, nats_settings=nats_settings, es=es, live=live, flow_env=flow_env, progress=progress, keep_old=keep_old, timeout=timeout)
    )
