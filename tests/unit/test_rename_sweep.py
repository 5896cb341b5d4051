"""The rename sweep of search_sync (dataflows/search_sync/renames.py) over an in-memory store: a room of many pages
is renamed completely (issue 12: a 10k+ room must finish), and rounds that rename nothing stay bounded."""

from __future__ import annotations

from dataflows.search_sync.parts import RoomRename
from dataflows.search_sync.renames import MAX_ROUNDS, Meta, rename_room
from dataflows.search_sync.views import ItemOutcome, RoomName, SpotlightBody
from schemas.carriers import AckHandle

PAGE = 500  # as the writer's RENAME_PAGE


class Store:
    """Spotlight documents of one room; `conflicts`: every write loses (someone else always got there first)."""

    def __init__(self, members: int, *, conflicts: bool = False) -> None:
        self.name: tuple[RoomName, Meta] | None = None
        self.docs = {
            f"a{i}_r": SpotlightBody(user_account=f"a{i}", room_id="r", room_name="old", room_type="c", site_id="s1", joined_at=1, name_ts=1)
            for i in range(members)
        }
        self.conflicts = conflicts
        self.searches = 0

    def read_name(self, room_id: str) -> tuple[RoomName, Meta] | None:
        return self.name

    def write_name(self, name: RoomName, meta: Meta | None) -> ItemOutcome:
        self.name = (name, (1, 1))
        return ItemOutcome.DONE

    def older_spotlight(self, room_id: str, name_ts: int) -> list[tuple[str, SpotlightBody, Meta]]:
        self.searches += 1
        return [(i, d, (1, 1)) for i, d in self.docs.items() if d.name_ts < name_ts][:PAGE]

    def write_spotlight(self, docs: list[tuple[str, SpotlightBody, Meta]]) -> list[ItemOutcome]:
        if self.conflicts:
            return [ItemOutcome.CONFLICT for _ in docs]
        self.docs |= {doc_id: doc for doc_id, doc, _ in docs}
        return [ItemOutcome.DONE for _ in docs]


def rename(ts: int) -> RoomRename:
    return RoomRename(ack=AckHandle(reply="r1"), room_id="r", name="new", ts=ts)


def test_a_room_of_many_pages_is_renamed_completely() -> None:
    store = Store(12_345)  # 25 pages: more than the rounds a conflict may cost
    assert rename_room(store, [rename(5)]) == ""
    assert {d.room_name for d in store.docs.values()} == {"new"}
    assert store.searches == 12_345 // PAGE + 2  # every page, then the empty search that ends the sweep


def test_rounds_that_rename_nothing_are_bounded() -> None:
    store = Store(3, conflicts=True)
    assert "still carry an older name" in rename_room(store, [rename(5)])
    assert store.searches == MAX_ROUNDS * 4
