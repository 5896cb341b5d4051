"""search_sync's memory of its own last writes: documents kept encoded, least recently written dropped past a byte budget.

Only hints (writer.py `_fetch`): a dropped entry costs one read, never a wrong write. Issue 12: held as
decoded structs, the user-room documents of 20k accounts took ~9 MB more per 100k member events (they grow
with every room an account was ever in, tombstones included) and had no bound in bytes; encoded (msgpack)
they take about a fifth of that, and the budget bounds them whatever the documents' sizes.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)
Meta = tuple[int, int]  # (_seq_no, _primary_term)

ENTRY_OVERHEAD: Final = 300  # bytes an entry costs besides its encoding: key, dict slot, tuple, ints, bytes header (measured: ~270-330)


class WriteCache(Generic[T]):
    """Documents by id with their concurrency tokens, within `max_bytes` (counted with `ENTRY_OVERHEAD`) and `max_entries`."""

    def __init__(self, doc_type: type[T], *, max_bytes: int, max_entries: int) -> None:
        self._decoder = msgspec.msgpack.Decoder(doc_type)
        self._encoder = msgspec.msgpack.Encoder()
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: dict[str, tuple[bytes, int, int]] = {}  # (encoded, seq_no, primary_term), least recently written first
        self._bytes = 0

    def get(self, key: str) -> tuple[T, Meta] | None:
        found = self._entries.get(key)
        return None if found is None else (self._decoder.decode(found[0]), (found[1], found[2]))

    def put(self, key: str, doc: T, meta: Meta) -> None:
        """Remember `doc` as the most recently written; drop the least recently written past either limit."""
        self.discard(key)
        data = self._encoder.encode(doc)
        if len(data) + ENTRY_OVERHEAD > self._max_bytes:
            return  # a document bigger than the whole budget is read each time rather than evict everything
        self._entries[key] = (data, *meta)
        self._bytes += len(data) + ENTRY_OVERHEAD
        while self._bytes > self._max_bytes or len(self._entries) > self._max_entries:
            self.discard(next(iter(self._entries)))

    def discard(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= len(found[0]) + ENTRY_OVERHEAD

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """What the entries count against the budget."""
        return self._bytes
