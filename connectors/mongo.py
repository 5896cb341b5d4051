"""MongoDB client factory and the indexes every collection needs."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure

from connectors.parallel import run_all
from connectors.settings import MongoSettings

# The store is down or failing over: retry with backoff, never dead-letter at once. ConnectionFailure covers
# AutoReconnect, NetworkTimeout, NotPrimaryError, ServerSelectionTimeoutError and WaitQueueTimeoutError.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ConnectionFailure,)

Document = dict[str, Any]
DUPLICATE_KEY = 11000
# values per `$in` where the server pushes `$in` down (FerretDB on PostgreSQL, scripts/ferretdb/postgresql-in-pushdown.patch):
# served from an index, but each row read is checked against the whole list again, so n values cost about n²/2 checks
IN_CHUNK: Final = 100
INSERT_CHUNK: Final = 1_000  # documents per insert_many sent side by side to such a server (issue 12: a 10k-member room)
CHUNKS_IN_FLIGHT: Final = 4  # FerretDB and PostgreSQL work a statement on a core each: a chunk in flight per core, and more

T = TypeVar("T")
R = TypeVar("R")
_chunk_pool: ThreadPoolExecutor | None = None


def is_transient(exc: BaseException) -> bool:
    """MongoDB away or failing over: worth retrying (`except TRANSIENT_ERRORS` says the same in a handler)."""
    return isinstance(exc, TRANSIENT_ERRORS)


def each_chunk(work: Callable[[T], R], chunks: Sequence[T]) -> list[R]:
    """`work` of every chunk, up to CHUNKS_IN_FLIGHT at once; every chunk has ended when this returns or raises."""
    global _chunk_pool
    if len(chunks) <= 1:
        return [work(chunk) for chunk in chunks]
    with _lock:
        if _chunk_pool is None:  # this thread runs one chunk itself
            _chunk_pool = ThreadPoolExecutor(CHUNKS_IN_FLIGHT - 1, thread_name_prefix="mongo-chunk")
    return run_all(_chunk_pool, work, chunks, retryable=TRANSIENT_ERRORS)


def insert_missing(collection: Collection[Document], docs: Sequence[Document]) -> set[str]:
    """Insert `docs` (unordered); return the `_id`s that existed already (an earlier delivery's or a race's insert).

    `insert_many` rather than upserts with `$setOnInsert`: FerretDB drops null fields from `$setOnInsert`
    (a dm's `roles: null` would vanish), and on FerretDB/SQLite every filtered write scans its collection.
    Many documents go in chunks of INSERT_CHUNK, side by side where the server works them on several cores
    (`pushes_in_down`), one after another elsewhere (a command each stays well under the socket timeout).
    """
    chunks = [docs[i : i + INSERT_CHUNK] for i in range(0, len(docs), INSERT_CHUNK)]
    if len(chunks) > 1 and pushes_in_down(collection):
        return set().union(*each_chunk(lambda chunk: _insert_missing(collection, chunk), chunks))
    return set().union(*(_insert_missing(collection, chunk) for chunk in chunks))


def _insert_missing(collection: Collection[Document], docs: Sequence[Document]) -> set[str]:
    if not docs:
        return set()
    try:
        collection.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {str(docs[e["index"]]["_id"]) for e in errors}
    return set()


_pushes_in: weakref.WeakKeyDictionary[MongoClient[Document], bool] = weakref.WeakKeyDictionary()  # per server


def pushes_in_down(coll: Collection[Document]) -> bool:
    """Whether the server hands an `$in` to its storage as SQL (FerretDB on PostgreSQL, patched): asked once per server.

    Not MongoDB (no `filterPushdown` in its `explain`; it serves any `$in` from an index), nor FerretDB on SQLite, which
    scans the collection once per query: there one query beats several.
    """
    client = coll.database.client
    known = _pushes_in.get(client)
    if known is None:
        plan = coll.database.command("explain", {"find": coll.name, "filter": {"_id": {"$in": [""]}}})
        if "filterPushdown" in plan and not plan.get("queryPlanner"):
            return False  # FerretDB, and no such collection yet: nothing to read; ask again next time
        known = _pushes_in[client] = plan.get("filterPushdown") is True
    return known


def in_chunks(coll: Collection[Document], values: Iterable[Any]) -> list[list[Any]]:
    """The distinct `values`, sorted, in lists of at most IN_CHUNK where `coll`'s server pushes `$in` down: one `$in` each."""
    wanted = sorted(set(values))
    size = IN_CHUNK if wanted and pushes_in_down(coll) else max(len(wanted), 1)
    return [wanted[i : i + size] for i in range(0, len(wanted), size)]


def find_in(
    coll: Collection[Document], field: str, values: Iterable[Any], *, also: Document | None = None, projection: Document | None = None
) -> list[Document]:
    """The documents whose `field` is one of `values` (and that match `also`), in chunks (`in_chunks`) read side by side."""
    found = each_chunk(lambda chunk: list(coll.find({field: {"$in": chunk}, **(also or {})}, projection)), in_chunks(coll, values))
    return [d for docs in found for d in docs]


def delete_in(coll: Collection[Document], field: str, values: Iterable[Any]) -> int:
    """Delete the documents whose `field` is one of `values`, a statement per chunk (`in_chunks`); returns how many."""
    return sum(each_chunk(lambda chunk: int(coll.delete_many({field: {"$in": chunk}}).deleted_count), in_chunks(coll, values)))


def client(settings: MongoSettings, **overrides: Any) -> MongoClient[Document]:
    """A client for `settings`; credentials come from settings, never from a logged URI. `overrides`: MongoClient options
    (a tool's shorter timeouts)."""
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": 5_000,
        "connectTimeoutMS": 5_000,
        "socketTimeoutMS": 30_000,
        "retryWrites": False,  # FerretDB has no sessions; our writes are idempotent anyway
    }
    if settings.username:
        options["username"] = settings.username
        options["password"] = settings.password
    if settings.tls_ca_file:
        options["tls"] = True
        options["tlsCAFile"] = settings.tls_ca_file
    return MongoClient(settings.uri, **{**options, **overrides})


_clients: dict[MongoSettings, MongoClient[Document]] = {}
_lock = threading.Lock()


def database(settings: MongoSettings) -> Database[Document]:
    """The database of `settings` on this process's one client for it: a flow that retries its start-up while the
    store is down reuses the client instead of leaving one (and its monitor threads) behind per attempt."""
    with _lock:
        shared = _clients.get(settings)
        if shared is None:
            shared = _clients[settings] = client(settings)
    return shared[settings.database]


def ensure_indexes(db: Database[Document]) -> None:
    """Create every index the flows rely on (idempotent)."""
    db.subscriptions.create_index(
        [("roomId", ASCENDING), ("u.account", ASCENDING)], unique=True, name="room_account_unique"
    )
    db.subscriptions.create_index([("u.account", ASCENDING)], name="account")
    db.room_members.create_index(
        [("rid", ASCENDING), ("member.type", ASCENDING), ("member.id", ASCENDING)],
        unique=True,
        name="room_member_unique",
    )
    # inbox_mirror's registers (docs/inbox_mirror.md): `key` finds a register's versions; `ts` serves the purge
    db.membership_guards.create_index([("key", ASCENDING)], name="key")
    db.membership_guards.create_index([("ts", ASCENDING)], name="ts")
    db.room_names.create_index([("ts", ASCENDING)], name="ts")
    db.users.create_index([("account", ASCENDING)], unique=True, name="account_unique")
    db.users.create_index([("sectId", ASCENDING)], name="sect")
    db.users.create_index([("deptId", ASCENDING)], name="dept")
