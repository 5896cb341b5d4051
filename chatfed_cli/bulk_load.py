"""The bulk rebuild's plumbing: read `INBOX_{site}` in chunks, write a fold's changes as plain bulks, replay a tail guarded."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, cast

import msgspec
from elasticsearch import Elasticsearch
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from chatfed_cli.nats_wire import Message, Status, Wire, WireError, pending_of
from chatfed_cli.parse_pool import Parsers, parse_messages
from connectors.elastic import ENCODER
from connectors.settings import NatsSettings
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.fold import Changes, ViewsFold
from dataflows.search_sync.indexes import SearchIndexes
from dataflows.search_sync.parts import Part
from dataflows.search_sync.writer import SearchViewsWriter
from schemas.streams import ConsumerSpec

log = logging.getLogger(__name__)

FETCH: Final = 20_000  # messages per pull request (~8 MB of INBOX messages)
_PULL: Final = msgspec.json.encode({"batch": FETCH, "no_wait": True})
SILENT_S: Final = 30.0  # a pull answer silent this long: the server is gone
FOLD_PARTS: Final = 200_000  # parts folded at once (~50 MB): an account is re-planned once per fold, so bigger is cheaper
BULK_BYTES: Final = 4 << 20  # one bulk request's body; ES's sweet spot is a few MB
SLICE_DOCS: Final = 1_000  # documents encoded per `encode_lines` call
BULK_THREADS: Final = 3  # bulks in flight: one per ES write thread (2 cores here), one more being sent
BULK_TIMEOUT_S: Final = 300  # a busy node may take long over a 4 MB bulk; a timed-out one is sent again (plain index ops: harmless)
TAIL_ROUNDS: Final = 20  # guarded replays of the post-swap tail before giving up on a part


class StreamReader:
    """Every message of a stream's filter (deliver all), in chunks of parsed parts; poison is skipped and counted.

    The temporary durable (no acks: the live search_sync owns the messages) is made with nats-py; the messages come
    over a `Wire` of our own (nats_wire.py). One pull request of `FETCH` messages is answered at a time, and the next
    is asked for before a chunk is parsed, so the server streams it while we work. A message's reply subject says
    how many are still pending after it: a chunk ending on 0 (or a "no messages" status) has caught up.
    """

    def __init__(self, client: Client, settings: NatsSettings, spec: ConsumerSpec) -> None:
        self._client, self._js, self._spec = client, client.jetstream(), spec
        self._wire = Wire(settings, name="chatfed-rebuild-reader")
        self._inbox = client.new_inbox()
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._asked = False
        self.events = 0
        self.poison = 0

    async def open(self) -> None:
        filters = list(self._spec.filter_subjects)
        config = ConsumerConfig(
            durable_name=self._spec.durable,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            max_waiting=16,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )
        await self._js.add_consumer(self._spec.stream, config)
        await self._wire.open(self._inbox)

    async def close(self) -> None:
        await self._wire.close()
        try:
            await self._js.delete_consumer(self._spec.stream, self._spec.durable)
        except NotFoundError:
            pass  # never made (open failed)

    async def pending(self) -> int:
        info = await self._js.consumer_info(self._spec.stream, self._spec.durable)
        return int(info.num_pending or 0)

    async def _ask(self) -> None:
        await self._wire.request(self._next, self._inbox, _PULL)
        self._asked = True

    async def messages(self) -> tuple[list[Message], bool]:
        """The next pull request's messages, and whether the stream held more when the last of them was sent."""
        if not self._asked:
            await self._ask()
        got: list[Message] = []
        statuses: list[Status] = []
        while len(got) < FETCH and not statuses:
            try:
                await asyncio.wait_for(self._wire.read(got, statuses), SILENT_S)
            except TimeoutError as exc:
                raise WireError(f"no answer to a pull request for {SILENT_S:.0f}s ({len(got)} messages so far)") from exc
        self._asked = False
        for status in statuses:
            if status.code not in (404, 408):  # "no messages" / "request timeout": this request is over
                raise WireError(f"pull request refused: {status.code} {status.text}")
        more = not statuses and bool(got) and pending_of(got[-1].reply) != 0
        if more:
            await self._ask()  # the server streams the next chunk while this one is parsed and folded
        self.events += len(got)
        return got, more

    async def fold_all(self, fold: ViewsFold, parsers: Parsers, progress: Callable[[int], None] = lambda events: None) -> None:
        """Fold every message the stream holds now (until a pull finds nothing more pending).

        Chunks are decoded by `parsers` (worker processes) while the next ones are read; decoded parts are folded
        `FOLD_PARTS` at a time on a thread, so the socket keeps being read meanwhile (a server whose writes to us
        stall for seconds would drop us as a slow consumer).
        """
        parsing: deque[asyncio.Future[tuple[list[Part], int]]] = deque()
        buffered: list[Part] = []
        folding: asyncio.Future[None] | None = None

        async def take_parsed() -> None:
            nonlocal buffered, folding
            parts, poison = await parsing.popleft()
            self.poison += poison
            buffered.extend(parts)
            if len(buffered) >= FOLD_PARTS and (folding is None or folding.done()):
                if folding is not None:
                    await folding  # raise its failure
                folding = asyncio.ensure_future(asyncio.to_thread(fold.apply, buffered))
                buffered = []

        more = True
        while more:
            messages, more = await self.messages()
            parsing.append(asyncio.ensure_future(parsers.parse(self._spec.stream, messages)))
            while len(parsing) > parsers.depth or (parsing and parsing[0].done()):
                await take_parsed()
            progress(self.events)
        while parsing:
            await take_parsed()
        if folding is not None:
            await folding
        fold.apply(buffered)

    async def parts_until_caught_up(self) -> list[Part]:
        """Every part of the messages the stream holds now (a post-swap tail: small), decoded here."""
        out: list[Part] = []
        more = True
        while more:
            messages, more = await self.messages()
            parts, poison = parse_messages(self._spec.stream, messages)
            self.poison += poison
            out.extend(parts)
        return out


def _slices(docs: Mapping[str, msgspec.Struct], deletes: Sequence[str]) -> Iterator[bytes]:
    """NDJSON of plain `index` operations (then `delete`s) for one index, `SLICE_DOCS` documents per piece.

    The action lines name no index (the request's path does) and are made by bytes concatenation around the
    JSON-encoded id; `encode_lines` writes each Struct with its wire (camelCase) keys, as the guarded writer stores it.
    """
    ids = list(docs)
    values = list(docs.values())
    for start in range(0, len(ids), SLICE_DOCS):
        chunk = ids[start : start + SLICE_DOCS]
        lines: list[Any] = [None] * (2 * len(chunk))
        lines[0::2] = [msgspec.Raw(b'{"index":{"_id":' + doc_id + b"}}") for doc_id in _encoded_ids(chunk)]
        lines[1::2] = values[start : start + SLICE_DOCS]
        yield ENCODER.encode_lines(lines)
    for start in range(0, len(deletes), SLICE_DOCS):
        chunk = list(deletes[start : start + SLICE_DOCS])
        yield ENCODER.encode_lines([msgspec.Raw(b'{"delete":{"_id":' + doc_id + b"}}") for doc_id in _encoded_ids(chunk)])


def _encoded_ids(ids: list[str]) -> list[bytes]:
    """Each id as a JSON string (escaped), in one encoder call."""
    return ENCODER.encode_lines(ids).split(b"\n")[: len(ids)]


def bodies(changes: Changes, target: SearchIndexes) -> Iterator[tuple[str, bytes]]:
    """(concrete index, NDJSON body of about `BULK_BYTES`) for every change."""
    for index, docs, deletes in (
        (target.user_room, changes.user_rooms, ()),
        (target.spotlight, changes.spotlight, changes.spotlight_deletes),
        (target.room_names, changes.names, ()),
    ):
        pieces: list[bytes] = []
        size = 0
        for piece in _slices(docs, deletes):
            pieces.append(piece)
            size += len(piece)
            if size >= BULK_BYTES:
                yield index, b"".join(pieces)
                pieces, size = [], 0
        if pieces:
            yield index, b"".join(pieces)


def _send(es: Elasticsearch, index: str, body: bytes) -> None:
    # only failed items come back (a delete of an absent document is no error): no 100k-item answer to parse
    client = es.options(request_timeout=BULK_TIMEOUT_S)
    response = client.bulk(index=index, operations=cast(Any, body), refresh=False, filter_path="errors,items.*.error")
    if response.get("errors"):
        action, result = next(iter(response["items"][0].items()))
        raise RuntimeError(f"bulk load into {index}: {action} failed ({len(response['items'])} items): {result['error']}")


def bulk_write(es: Elasticsearch, changes: Changes, target: SearchIndexes) -> None:
    """Write `changes` into the concrete `target` indexes with unguarded bulks, `BULK_THREADS` in flight.

    Elasticsearch indexes a bulk per write thread (one per core): with several in flight every core works while
    this thread encodes the next body and a finished one's answer travels back.
    """
    with ThreadPoolExecutor(BULK_THREADS) as pool:
        in_flight: deque[Future[None]] = deque()
        for index, body in bodies(changes, target):
            if len(in_flight) > BULK_THREADS:
                in_flight.popleft().result()  # raise the first failure; bounds the bodies held
            in_flight.append(pool.submit(_send, es, index, body))
        for future in in_flight:
            future.result()


def replay_guarded(writer: SearchViewsWriter, parts: list[Part]) -> None:
    """Apply `parts` through the live flow's guarded writer (the indexes are live now): retry what fails."""
    todo = parts
    for _ in range(TAIL_ROUNDS):
        if not todo:
            return
        keyed: dict[str, list[object]] = {}
        for part in todo:
            keyed.setdefault(search_parts.part_key(part), []).append(part)
        outcomes = writer.write(list(keyed.items()))  # one outcome per part, in the batch's order
        todo = [part for part, outcome in zip((p for items in keyed.values() for p in items), outcomes) if not outcome.ok]  # type: ignore[misc]
        if todo:
            log.warning("post-swap tail: %d parts failed, retrying", len(todo))
    if todo:
        raise RuntimeError(f"post-swap tail: {len(todo)} parts still failing after {TAIL_ROUNDS} rounds")
