"""The bulk rebuild's decode of INBOX messages into parts, by the flow's own `parts.parse`, inline or on worker processes.

Decoding is the rebuild's biggest CPU cost (about 13 us a message against 3 for reading and 8 for folding), and
messages decode independently, so chunks are handed to a pool of processes while the rebuild reads the next
chunk and folds the previous ones. A chunk travels as msgpack (the raw messages there, the parts back): about
1 us a message both ways. A spawned worker imports the search_sync package on start (0.5-1 CPU-second), so
`chatfed rebuild` uses workers for big streams only (rebuild.py, `PARALLEL_FROM`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import msgspec

from chatfed_cli.nats_wire import Message, header_dict
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.parts import MemberChange, Part, RoomRename
from schemas.carriers import Delivery

_ENCODER: Final = msgspec.msgpack.Encoder()
_MESSAGES: Final = msgspec.msgpack.Decoder(list[Message])
_PARSED: Final = msgspec.msgpack.Decoder(tuple[list[MemberChange], list[RoomRename], int])


def parse_messages(stream: str, messages: list[Message]) -> tuple[list[Part], int]:
    """The parts of `messages`, and how many were poison (the live flow dead-letters those; a rebuild leaves them out)."""
    parts: list[Part] = []
    poison = 0
    parse, is_parts = search_parts.parse, search_parts.is_parts
    for msg in messages:
        parsed = parse(
            Delivery(subject=msg.subject, data=msg.data, reply="", stream=stream, stream_seq=0, num_delivered=1, headers=header_dict(msg.headers))
        )
        if is_parts(parsed):
            parts.extend(parsed)
        else:
            poison += 1
    return parts, poison


def _parse_encoded(stream: str, blob: bytes) -> bytes:
    """In a worker: `parse_messages` from msgpack to msgpack (members and renames apart: a Struct union needs tags)."""
    parts, poison = parse_messages(stream, _MESSAGES.decode(blob))
    members = [part for part in parts if isinstance(part, MemberChange)]
    renames = [part for part in parts if isinstance(part, RoomRename)]
    return _ENCODER.encode((members, renames, poison))


def _warm() -> None:
    """A no-op run once per worker at start, so the pool's start-up is not paid on the first chunk."""


def default_workers() -> int:
    """One worker per core this process may run on but one (the reader and the fold keep this process busy)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores - 1


class Parsers:
    """`parse(stream, messages)` → awaitable (parts, poison): inline with 0 workers, else on a process pool.

    Workers are spawned (not forked: the parent holds a running event loop and client threads).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.depth = workers + 1 if workers else 0  # chunks in flight: one queued behind those being decoded
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    async def start(self) -> None:
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._pool, _warm) for _ in range(self.workers)))

    def parse(self, stream: str, messages: list[Message]) -> Awaitable[tuple[list[Part], int]]:
        if self._pool is None:
            future: asyncio.Future[tuple[list[Part], int]] = asyncio.get_running_loop().create_future()
            future.set_result(parse_messages(stream, messages))
            return future
        return self._decoded(asyncio.get_running_loop().run_in_executor(self._pool, _parse_encoded, stream, _ENCODER.encode(messages)))

    @staticmethod
    async def _decoded(blob: Awaitable[bytes]) -> tuple[list[Part], int]:
        members, renames, poison = _PARSED.decode(await blob)
        return [*members, *renames], poison

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
