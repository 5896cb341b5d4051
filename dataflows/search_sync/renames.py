"""search_sync's rename protocol: a `room_renamed` sets the room's name, then every spotlight document of the room.

Last write wins by timestamp (SYSTEM.md §5). The name is written to room-names first (guarded by its
seq_no), then the room's spotlight documents that carry an older name are searched (after a refresh) and
rewritten, each guarded by its seq_no. A member write that read the names before this name landed is
caught by the writer's re-read of room-names after its own write (`SearchViewsWriter._renamed_meanwhile`),
so whichever side writes a spotlight document last, it ends with the newest name. Store errors
(Elasticsearch unreachable) propagate to the writer, which fails the whole batch.
"""

from __future__ import annotations

from typing import Final, Protocol

from dataflows.search_sync import views
from dataflows.search_sync.parts import RoomRename
from dataflows.search_sync.views import ItemOutcome, RoomName, SpotlightBody

Meta = tuple[int, int]  # (_seq_no, _primary_term) for optimistic concurrency
MAX_ROUNDS: Final = 5  # conflicts are rare: one worker owns an account, one a room
OVERLOADED: Final = "elasticsearch overloaded or unavailable (429/5xx)"


class RenameStore(Protocol):
    """What the protocol needs from Elasticsearch (implemented by `SearchViewsWriter`)."""

    def read_name(self, room_id: str) -> tuple[RoomName, Meta] | None: ...

    def write_name(self, name: RoomName, meta: Meta | None) -> ItemOutcome: ...

    def older_spotlight(self, room_id: str, name_ts: int) -> list[tuple[str, SpotlightBody, Meta]]:
        """The room's (refreshed) spotlight documents named before `name_ts`, dm / botDM excluded: (id, doc, meta)."""
        ...

    def write_spotlight(self, docs: list[tuple[str, SpotlightBody, Meta]]) -> list[ItemOutcome]: ...


def rename_room(store: RenameStore, renames: list[RoomRename]) -> str:
    """Apply one room's renames; "" when done, otherwise why its parts must be retried.

    A stale rename (older than the stored name) writes nothing, but still sweeps the spotlight documents,
    so the redelivery of a rename that failed halfway finishes the job.
    """
    room_id = renames[0].room_id
    name: RoomName | None = None
    for _ in range(MAX_ROUNDS):
        found = store.read_name(room_id)
        stored = found[0] if found else None
        name = views.newest_name(stored, renames)
        if name is None or name == stored:
            break
        outcome = store.write_name(name, found[1] if found else None)
        if outcome is ItemOutcome.DONE:
            break
        if outcome is ItemOutcome.RETRY:
            return OVERLOADED
    else:
        return f"version conflicts on room name {room_id}"
    if name is None:
        return ""
    # page after page until none is left (a 10k+ room is many pages); only rounds that rename nothing are
    # bounded: every document a round renames leaves the search, so the sweep ends
    stuck = 0
    while stuck < MAX_ROUNDS * 4:
        updates = [
            (doc_id, updated, meta)
            for doc_id, doc, meta in store.older_spotlight(room_id, name.name_ts)
            if (updated := views.renamed(doc, name)) is not None
        ]
        if not updates:
            return ""
        outcomes = store.write_spotlight(updates)
        if ItemOutcome.RETRY in outcomes:
            return OVERLOADED
        # conflicts (a concurrent add or remove) are searched again in the next round
        stuck = 0 if ItemOutcome.DONE in outcomes else stuck + 1
    return f"room {room_id}: spotlight documents still carry an older name"
