"""search_sync's writer: the guarded bulk writes of the user-room and spotlight views (renames: renames.py).

Every write is guarded (`create`, or `index` with the seq_no read), so a concurrent writer makes it
conflict and the account is re-read and re-planned, at most `MAX_ROUNDS` times. Elasticsearch being
unreachable or overloaded (`Transient`) fails every part of the batch; a part that kept conflicting or
got a 429/5xx item fails alone. Either way JetStream redelivers it later. A little over 300 lines: the
member path (read with hints, plan, guarded bulk, re-read) is one protocol over one cache; renames live apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar, cast

import msgspec
from elasticsearch import Elasticsearch

from connectors import metrics
from connectors.elastic import ENCODER, elastic_client, is_transient
from connectors.operators import PartOutcome
from connectors.parallel import run_all
from connectors.settings import ElasticSettings
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync import views
from dataflows.search_sync.cache import WriteCache
from dataflows.search_sync.indexes import SearchIndexes
from dataflows.search_sync.parts import MemberChange, RoomRename
from dataflows.search_sync.renames import MAX_ROUNDS, OVERLOADED, Meta, rename_room
from dataflows.search_sync.views import ItemOutcome, RoomName, SpotlightBody, UserRoomBody
from schemas.documents import from_mongo, spotlight_doc_id
from schemas.membership import DIRECT_TYPES

log = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)
Action = tuple[dict[str, Any], msgspec.Struct | None]

STORE: Final = "elasticsearch"
CACHED_ACCOUNTS: Final = 20_000  # user-room documents remembered with the seq_no of our own last write
CACHED_BYTES: Final = 8 * 1024 * 1024  # ... and within this many bytes, encoded (cache.py), however big the documents (issue 12)
CACHED_NAMES: Final = 100_000  # room names last seen
MEMBER_SLICE: Final = 1_000  # accounts read, planned and written together (their documents are decoded at once)
MIN_LANE: Final = 300  # lanes only for a batch this big per lane: a backlog or a big room; small batches fare better in one (issue 12 bench)
RENAME_PAGE: Final = 500


class Transient(Exception):
    """Elasticsearch is unreachable or overloaded (`is_transient`, or an mget item error): retry the whole batch later."""


def _decode(doc_type: type[T], source: Mapping[str, Any]) -> T:
    return from_mongo(doc_type, source)


class _Fetched:
    """Documents read in one mget, with their concurrency tokens."""

    def __init__(self) -> None:
        self.user_rooms: dict[str, tuple[UserRoomBody, Meta]] = {}
        self.spotlight: dict[str, tuple[SpotlightBody, Meta]] = {}
        self.names: dict[str, tuple[RoomName, Meta]] = {}
        self.from_cache: set[str] = set()  # accounts whose user-room document is our own last write, not read


class SearchViewsWriter:
    """Writes coalesced batches to user-room and spotlight; one `PartOutcome` per part (SYSTEM.md §5)."""

    def __init__(self, settings: ElasticSettings, indexes: SearchIndexes, *, flow: str, lanes: int = 1) -> None:
        self._settings = settings
        self._indexes = indexes
        self._flow = flow
        self._es: Elasticsearch | None = None
        # Disjoint sets of accounts written side by side: one lane plans while another's bulk is in Elasticsearch,
        # which indexes concurrent bulks into one shard on several threads (issue 12: serial, the flow waited on
        # the bulk and the bulk on the flow). Lanes share the caches below, under `_lock`.
        self._lanes = lanes
        self._pool = ThreadPoolExecutor(lanes - 1, thread_name_prefix=f"{flow}-lane") if lanes > 1 else None
        self._lock = threading.Lock()
        # Hints for a batch's first round, so a backlog is not re-read document by document (see `_fetch`).
        # A wrong hint costs one more round, never a wrong write: every write is guarded by seq_no or `create`,
        # and every spotlight name is checked against room-names after the write (`_renamed_meanwhile`).
        self._user_rooms = WriteCache(UserRoomBody, max_bytes=CACHED_BYTES, max_entries=CACHED_ACCOUNTS)
        self._names: dict[str, RoomName] = {}

    @property
    def es(self) -> Elasticsearch:
        if self._es is None:  # opened lazily, in the process that writes
            self._es = elastic_client(self._settings)
        return self._es

    def write(self, batch: list[tuple[str, list[object]]]) -> list[PartOutcome]:
        """Apply every part of `batch` (key, parts) and report each part's outcome."""
        members: dict[str, list[MemberChange]] = {}
        renames: dict[str, list[RoomRename]] = {}
        parts: list[search_parts.Part] = []
        for key, items in batch:
            for item in items:
                if isinstance(item, MemberChange):
                    members.setdefault(key, []).append(item)
                elif isinstance(item, RoomRename):
                    renames.setdefault(key, []).append(item)
                else:
                    raise TypeError(f"unexpected part {type(item).__name__}")
                parts.append(item)
        failed: dict[str, str] = {}
        try:
            self._write_lanes(members, failed)
            for key, room_renames in renames.items():
                if reason := rename_room(self, room_renames):
                    failed[key] = reason
        except Transient as exc:
            self._user_rooms.clear()  # writes may or may not have landed: forget our copies (they would only conflict)
            log.warning("elasticsearch write of %d parts failed, will retry: %s", len(parts), exc)
            failed = {search_parts.part_key(part): str(exc) for part in parts}
        return [
            PartOutcome(ack=p.ack, ok=search_parts.part_key(p) not in failed, reason=failed.get(search_parts.part_key(p), ""))
            for p in parts
        ]

    def _write_lanes(self, members: dict[str, list[MemberChange]], failed: dict[str, str]) -> None:
        """Every account's changes, in up to `lanes` lanes of accounts written concurrently; returns when all are done."""
        accounts = sorted(members)
        count = max(1, min(self._lanes, len(accounts) // MIN_LANE))
        lanes = [accounts[i::count] for i in range(count)]
        if self._pool is None or count == 1:
            self._write_lane(lanes[0], members, failed)
            return
        _ = self.es  # opened once, before the lanes share it
        lane_failed: list[dict[str, str]] = [{} for _ in lanes]
        try:
            run_all(self._pool, lambda i: self._write_lane(lanes[i], members, lane_failed[i]), range(count), retryable=(Transient,))
        finally:
            for found in lane_failed:
                failed.update(found)

    def _write_lane(self, accounts: list[str], members: Mapping[str, list[MemberChange]], failed: dict[str, str]) -> None:
        for start in range(0, len(accounts), MEMBER_SLICE):  # bounds the batch's peak memory, whatever its size (issue 12)
            self._write_members({account: members[account] for account in accounts[start : start + MEMBER_SLICE]}, failed)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise Transient(f"{what}: {exc}") from exc
            raise

    def _mget(self, docs: list[dict[str, str]]) -> list[dict[str, Any]]:
        if not docs:
            return []
        found: list[dict[str, Any]] = self._call("mget", self.es.mget, docs=docs)["docs"]
        for doc in found:
            if "error" in doc:
                raise Transient(f"mget {doc.get('_index')}/{doc.get('_id')}: {doc['error']}")
        return found

    def _fetch(self, accounts: Iterable[str], members: Mapping[str, list[MemberChange]], *, hinted: bool) -> _Fetched:
        """What planning `accounts` needs: read it all, or (`hinted`) only what the hints cannot stand in for.

        With hints, a user-room document comes from our own last write to it, a room's name from the names
        cache (none if unknown), and a room the batch only adds to is taken to have no spotlight document
        (so it is written with `create`). Each guess is checked where it matters: a stale user-room or an
        existing spotlight document makes the write conflict, a newer name is found by the re-read after
        the write, and either way the account is re-planned in a round that reads everything. A room with a
        removal is always read: a delete must know the document exists. An account whose cached user-room
        needs no write is re-planned from a read too (see `_write_members`): only a guarded write proves a copy.
        """
        idx = self._indexes
        wanted: list[dict[str, str]] = []
        rooms: set[str] = set()
        fetched = _Fetched()
        for account in accounts:
            if hinted:
                with self._lock:
                    cached = self._user_rooms.get(account)
            else:
                cached = None
            if cached is not None:
                fetched.user_rooms[account] = cached
                fetched.from_cache.add(account)
            else:
                wanted.append({"_index": idx.user_room, "_id": account})
            # no spotlight document without a stamp in user-room (both are written in one bulk, and a failed
            # user-room write drops the cached copy); the user-room write guarded by the cached seq_no proves it
            unseen = {c.room_id for c in members[account] if c.added and c.room_id not in cached[0].room_timestamps} if cached else set()
            unseen -= {c.room_id for c in members[account] if not c.added}
            for room_id in {change.room_id for change in members[account]}:
                if room_id not in unseen:
                    wanted.append({"_index": idx.spotlight, "_id": spotlight_doc_id(account=account, room_id=room_id)})
                rooms.add(room_id)
        if hinted:
            with self._lock:
                fetched.names = {room_id: (name, (0, 0)) for room_id in rooms if (name := self._names.get(room_id)) is not None}
        else:
            wanted.extend({"_index": idx.room_names, "_id": room_id} for room_id in sorted(rooms))
        for doc, want in zip(self._mget(wanted), wanted):
            if not doc.get("found"):
                continue
            meta = _meta(doc)
            if want["_index"] == idx.user_room:
                fetched.user_rooms[want["_id"]] = (_decode(UserRoomBody, doc["_source"]), meta)
            elif want["_index"] == idx.spotlight:
                fetched.spotlight[want["_id"]] = (_decode(SpotlightBody, doc["_source"]), meta)
            else:
                fetched.names[want["_id"]] = (_decode(RoomName, doc["_source"]), meta)
                self._remember_name(fetched.names[want["_id"]][0])
        return fetched

    def _remember_name(self, name: RoomName) -> None:
        with self._lock:
            known = self._names.pop(name.room_id, None)
            self._names[name.room_id] = name if known is None or name.name_ts >= known.name_ts else known
            if len(self._names) > CACHED_NAMES:
                del self._names[next(iter(self._names))]  # oldest first

    def _remember_user_room(self, account: str, entry: tuple[UserRoomBody, Meta] | None) -> None:
        with self._lock:
            if entry is None:
                self._user_rooms.discard(account)
            else:
                self._user_rooms.put(account, *entry)

    def _bulk(self, actions: list[Action]) -> list[tuple[ItemOutcome, Meta | None]]:
        """Each action's outcome, with the written document's new (seq_no, primary_term) when it is known."""
        body = bytearray()
        for meta, source in actions:
            ENCODER.encode_into(meta, body, -1)
            body += b"\n"
            if source is not None:  # a Struct encodes with its wire (camelCase) keys, no dict in between
                ENCODER.encode_into(source, body, -1)
                body += b"\n"
        started = time.perf_counter()
        # require_alias: a missing alias must fail loudly, not auto-create an unmapped index
        response = self._call("bulk", self.es.bulk, operations=cast(Any, bytes(body)), require_alias=True, refresh=False)
        metrics.observe_write(self._flow, STORE, len(actions), time.perf_counter() - started)
        outcomes: list[tuple[ItemOutcome, Meta | None]] = []
        for item in response["items"]:
            action, result = next(iter(item.items()))
            error = result.get("error") or {}
            outcome = views.classify_bulk_item(action, int(result["status"]), error.get("type", ""))
            if outcome is ItemOutcome.FATAL:
                raise RuntimeError(f"elasticsearch rejected {action} {result.get('_index')}/{result.get('_id')}: {error}")
            written = "_seq_no" in result and "_primary_term" in result and outcome is ItemOutcome.DONE
            outcomes.append((outcome, _meta(result) if written else None))
        return outcomes

    def _write_members(self, members: dict[str, list[MemberChange]], failed: dict[str, str]) -> None:
        """mget, plan, bulk; re-read and re-plan the accounts that hit a conflict or a concurrent rename."""
        idx = self._indexes
        todo = sorted(members)
        for round_no in range(MAX_ROUNDS):
            if not todo:
                return
            fetched = self._fetch(todo, members, hinted=round_no == 0)
            names = {room_id: name for room_id, (name, _) in fetched.names.items()}
            spotlight = {doc_id: doc for doc_id, (doc, _) in fetched.spotlight.items()}
            actions: list[Action] = []  # first bulk: user-room writes, and spotlight changes that need none
            owners: list[str] = []
            after_user_room: dict[str, list[Action]] = {}  # spotlight changes sent once their user-room write landed
            named: dict[str, set[str]] = {}  # room -> accounts whose spotlight name came from this round's read
            user_room_writes: dict[int, tuple[str, UserRoomBody]] = {}  # action index -> (account, document written)
            retry: set[str] = set()
            for account in todo:
                stored = fetched.user_rooms.get(account)
                plan = views.plan_account(account, members[account], stored[0] if stored else None, spotlight, names)
                if plan.user_room is None and account in fetched.from_cache:
                    # nothing proves the cached copy is still what is stored (an index rebuilt behind the alias,
                    # documents deleted): decide from a read, next round
                    retry.add(account)
                    continue
                spotlight_actions: list[Action] = []
                for doc in plan.upserts:
                    doc_id = spotlight_doc_id(account=account, room_id=doc.room_id)
                    current = fetched.spotlight.get(doc_id)
                    spotlight_actions.append(_put(idx.spotlight, doc_id, doc, current[1] if current else None))
                    if doc.room_type not in DIRECT_TYPES:
                        named.setdefault(doc.room_id, set()).add(account)
                for doc_id in plan.deletes:
                    seq_no, term = fetched.spotlight[doc_id][1]
                    spotlight_actions.append(({"delete": {"_index": idx.spotlight, "_id": doc_id, "if_seq_no": seq_no, "if_primary_term": term}}, None))
                if plan.user_room is not None:
                    user_room_writes[len(actions)] = (account, plan.user_room)
                    actions.append(_put(idx.user_room, account, plan.user_room, stored[1] if stored else None))
                    owners.append(account)
                    # planned from a copy that may be stale (cached, or overtaken since the read): a spotlight
                    # change must not land unless the user-room write it was derived from did
                    if spotlight_actions:
                        after_user_room[account] = spotlight_actions
                    continue
                self._remember_user_room(account, stored)  # still what the store holds
                actions.extend(spotlight_actions)
                owners.extend([account] * len(spotlight_actions))
            for index, (owner, (outcome, written)) in enumerate(zip(owners, self._bulk(actions) if actions else [])):
                if index in user_room_writes:
                    account, user_room = user_room_writes[index]
                    self._remember_user_room(account, (user_room, written) if written is not None else None)
                if outcome is ItemOutcome.CONFLICT:
                    retry.add(owner)
                elif outcome is ItemOutcome.RETRY:
                    failed[owner] = OVERLOADED
            landed = [account for account in after_user_room if account not in retry and account not in failed]
            second = [action for account in landed for action in after_user_room[account]]
            second_owners = [account for account in landed for _ in after_user_room[account]]
            for owner, (outcome, _) in zip(second_owners, self._bulk(second) if second else []):
                if outcome is ItemOutcome.CONFLICT:
                    retry.add(owner)
                elif outcome is ItemOutcome.RETRY:
                    failed[owner] = OVERLOADED
            retry |= self._renamed_meanwhile(named, names)
            todo = sorted(retry - failed.keys())
        for account in todo:
            failed[account] = f"version conflicts on {account} after {MAX_ROUNDS} rounds"

    def _renamed_meanwhile(self, named: dict[str, set[str]], used: Mapping[str, RoomName]) -> set[str]:
        """Accounts whose spotlight name may be stale because a rename landed after we read the names.

        The rename path writes the name first and then searches refreshed spotlight documents, so a
        document written before that write is found by its search, and one written after is caught here.
        """
        if not named:
            return set()
        rooms = sorted(named)
        found = self._mget([{"_index": self._indexes.room_names, "_id": room_id} for room_id in rooms])
        stale: set[str] = set()
        for room_id, doc in zip(rooms, found):
            if doc.get("found"):
                name = _decode(RoomName, doc["_source"])
                self._remember_name(name)
                if room_id not in used or name.name_ts > used[room_id].name_ts:
                    stale |= named[room_id]
        return stale

    # the rename protocol's store (renames.RenameStore)

    def read_name(self, room_id: str) -> tuple[RoomName, Meta] | None:
        found = self._mget([{"_index": self._indexes.room_names, "_id": room_id}])[0]
        return (_decode(RoomName, found["_source"]), _meta(found)) if found.get("found") else None

    def write_name(self, name: RoomName, meta: Meta | None) -> ItemOutcome:
        ((outcome, _),) = self._bulk([_put(self._indexes.room_names, name.room_id, name, meta)])
        if outcome is ItemOutcome.DONE:
            self._remember_name(name)
        return outcome

    def older_spotlight(self, room_id: str, name_ts: int) -> list[tuple[str, SpotlightBody, Meta]]:
        index = self._indexes.spotlight
        self._call("refresh", self.es.indices.refresh, index=index)  # a search sees only refreshed documents
        query = {
            "bool": {
                "filter": [{"term": {"roomId": room_id}}, {"range": {"nameTs": {"lt": name_ts}}}],
                "must_not": [{"terms": {"roomType": sorted(DIRECT_TYPES)}}],
            }
        }
        found = self._call("search", self.es.search, index=index, size=RENAME_PAGE, seq_no_primary_term=True, query=query)
        return [(hit["_id"], _decode(SpotlightBody, hit["_source"]), _meta(hit)) for hit in found["hits"]["hits"]]

    def write_spotlight(self, docs: list[tuple[str, SpotlightBody, Meta]]) -> list[ItemOutcome]:
        return [outcome for outcome, _ in self._bulk([_put(self._indexes.spotlight, doc_id, doc, meta) for doc_id, doc, meta in docs])]


def _meta(doc: Mapping[str, Any]) -> Meta:
    return int(doc["_seq_no"]), int(doc["_primary_term"])


def _put(index: str, doc_id: str, doc: msgspec.Struct, meta: Meta | None) -> Action:
    """Create a missing document, or replace one only if nobody changed it since we read it."""
    if meta is None:
        return {"create": {"_index": index, "_id": doc_id}}, doc
    seq_no, term = meta
    return {"index": {"_index": index, "_id": doc_id, "if_seq_no": seq_no, "if_primary_term": term}}, doc
