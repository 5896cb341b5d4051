"""room_worker's MongoDB store (store_mongo.RoomStore) driven directly against the real FerretDB.

Outcomes are decided by the real handler over the same store, so the writes are the ones the flow makes.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from connectors.mongo import Document, ensure_indexes
from dataflows.room_worker.commands import Command, parse_command
from dataflows.room_worker.handler import BatchReads, RoomHandler
from dataflows.room_worker.outcomes import Outcome, RoomWrites
from dataflows.room_worker.store import Claim, IntentPending, Member, StoreUnavailable
from dataflows.room_worker.store_mongo import RECORDS, RoomStore
from schemas.carriers import Delivery
from schemas.documents import User, to_mongo
from testkit.clients import mongo_client
from testkit.support import unique_site

T0 = 1767225600000
PEOPLE = [
    User(id="u-alice", account="alice", site_id="s1"),
    User(id="u-bob", account="bob", site_id="s1"),
    User(id="u-carol", account="carol", site_id="s2", dept_id="org-sales"),
    User(id="u-dave", account="dave", site_id="s2", sect_id="org-sales"),
    User(id="u-sales.bot", account="sales.bot", site_id="s1", sect_id="org-sales"),
]


@pytest.fixture
def db(servers: dict[str, Any]) -> Iterator[Database[Document]]:
    """A database of its own, with the flow's indexes and PEOPLE; dropped afterwards."""
    client: MongoClient[Document] = mongo_client(servers, retryWrites=False)
    database = client[f"chat_{unique_site()}"]
    try:
        ensure_indexes(database)
        database.users.insert_many([to_mongo(u) for u in PEOPLE])
        yield database
    finally:
        client.drop_database(database.name)
        client.close()


def _command(op: str, body: dict[str, Any], seq: int) -> Command:
    delivery = Delivery(
        subject=f"chat.room.canonical.s1.{op}", data=json.dumps(body).encode(), reply=f"r{seq}", stream="ROOMS_s1", stream_seq=seq, num_delivered=1
    )
    parsed = parse_command(delivery, site="s1", mint_id=lambda: f"00000000-0000-7000-8000-{seq:012d}", now_ms=T0)
    assert isinstance(parsed, Command)
    return parsed


class Site:
    """A RoomStore and the handler deciding over it (fixed clock, counted ids)."""

    def __init__(self, db: Database[Document]) -> None:
        self.db = db
        self.store = RoomStore(db)
        ids = itertools.count(1)
        self.handler = RoomHandler(self.store, site="s1", clock=lambda: T0, new_id=lambda: f"{next(ids):032x}")
        self.seq = itertools.count(1)

    def decide(self, op: str, body: dict[str, Any]) -> Outcome:
        outcome = self.handler.decide(_command(op, body, next(self.seq)), BatchReads())
        assert outcome.ok, outcome.reason
        return outcome

    def create(self, room_id: str, users: list[str], orgs: tuple[str, ...] = ()) -> Outcome:
        body = {"name": room_id, "users": users, "orgs": list(orgs), "roomId": room_id, "requesterAccount": "alice", "timestamp": T0}
        return self.decide("create", body)

    def claim(self, room_id: str, request: str, nonce: str) -> Claim:
        outcome = self.create(room_id, ["bob"])
        return Claim(outcome=msgspec.structs.replace(outcome, request_key=request), nonce=nonce)

    def snapshot(self) -> dict[str, list[Document]]:
        return {name: sorted(self.db[name].find(), key=lambda d: str(d["_id"])) for name in ("rooms", "subscriptions", "room_members")}


def test_a_request_is_claimed_once_and_answered_from_its_record_after(db: Database[Document]) -> None:
    site = Site(db)
    first, second = site.claim("r-1", "req-1", "nonce-a"), site.claim("r-1", "req-1", "nonce-b")
    mine = site.store.record(first, T0)
    assert mine.nonce == "nonce-a"
    assert (mine.outcome.writes, mine.outcome.publishes, mine.outcome.result) == (RoomWrites(), [], first.outcome.result)  # the answer only
    again = site.store.record(second, T0 + 1)
    assert again == mine  # answered before: the first run's answer, not the second's
    third = site.claim("r-2", "req-2", "nonce-c")
    before = site.store.record_many([second, third], T0 + 2)
    assert before == {"req-1": mine}  # req-2 is new: claimed by this call
    assert site.store.record(third, T0 + 3).nonce == "nonce-c"


def test_intents_are_saved_found_and_cleared(db: Database[Document]) -> None:
    site = Site(db)
    one, two, three = site.claim("r-1", "req-1", "n1"), site.claim("r-2", "req-2", "n2"), site.claim("r-3", "req-3", "n3")
    assert site.store.intent("r-1") is None
    site.store.save_intent(one, T0)
    assert site.store.intent("r-1") == one  # the whole outcome comes back: writes and events to finish
    with pytest.raises(IntentPending):
        site.store.save_intent(site.claim("r-1", "req-9", "n9"), T0)
    assert site.store.intent("r-1") == one  # the room keeps its first intent
    assert site.store.save_intents([two, one, three], T0) == {"r-1"}
    assert site.store.rooms_with_intents(["r-1", "r-2", "r-3", "r-4"]) == {"r-1", "r-2", "r-3"}
    site.store.clear_intent("r-1")
    site.store.clear_intents(["r-2", "r-3"])
    assert site.store.rooms_with_intents(["r-1", "r-2", "r-3"]) == set()
    assert site.store.intent("r-2") is None


def test_apply_many_replayed_changes_nothing(db: Database[Document]) -> None:
    site = Site(db)
    creates = [site.create("r-org", ["bob"], orgs=("org-sales",)), site.create("r-plain", ["bob", "carol"])]
    site.store.apply_many(creates, T0)
    after_creates = site.snapshot()
    assert [d["_id"] for d in after_creates["rooms"]] == ["r-org", "r-plain"]
    assert sorted(d["u"]["account"] for d in db.subscriptions.find({"roomId": "r-org"})) == ["alice", "bob", "carol", "dave"]
    changes = [
        site.decide("member.add", {"roomId": "r-plain", "users": ["dave"], "requesterAccount": "alice", "timestamp": T0 + 1}),
        site.decide("member.remove", {"roomId": "r-org", "requester": "alice", "orgId": "org-sales", "timestamp": T0 + 1}),
    ]
    site.store.apply_many(changes, T0 + 10)
    done = site.snapshot()
    assert sorted(d["u"]["account"] for d in db.subscriptions.find({"roomId": "r-org"})) == ["alice", "bob"]
    rooms = {d["_id"]: (d["userCount"], d["appCount"], d["updatedAt"]) for d in done["rooms"]}
    assert rooms == {"r-org": (2, 0, T0 + 10), "r-plain": (4, 0, T0 + 10)}
    site.store.apply_many([*creates, *changes], T0 + 20)  # a redelivered round: every write again
    site.store.apply(changes[0], T0 + 30)
    assert site.snapshot() == done  # not even `updatedAt` moved


def test_records_are_purged_by_age(db: Database[Document]) -> None:
    site = Site(db)
    old, recent = site.claim("r-1", "req-old", "n1"), site.claim("r-2", "req-new", "n2")
    site.store.record(old, T0)
    site.store.record(recent, T0 + 1000)
    assert site.store.purge_records(T0 + 1) == 1
    assert [d["_id"] for d in db[RECORDS].find()] == ["req-new"]
    assert site.store.record(msgspec.structs.replace(old, nonce="n3"), T0 + 2000).nonce == "n3"  # forgotten: a new claim
    assert site.store.record(msgspec.structs.replace(recent, nonce="n4"), T0 + 2000).nonce == "n2"


def test_lookups(db: Database[Document]) -> None:
    site = Site(db)
    site.store.apply_many([site.create("r-org", ["bob", "sales.bot"], orgs=("org-sales",)), site.create("r-plain", ["bob"])], T0)
    store = site.store
    assert sorted(store.users_by_accounts(["alice", "carol", "zoe", "alice"])) == ["alice", "carol"]
    assert store.users_by_accounts([]) == {}
    assert sorted(u.account for u in store.org_members(["org-sales"])) == ["carol", "dave", "sales.bot"]  # by sect or dept
    assert store.org_members([]) == []
    room = store.room("r-org")
    assert room is not None and (room.type, room.user_count, room.app_count) == ("channel", 4, 1)
    assert store.room("r-none") is None
    assert {k: v is not None for k, v in store.rooms(["r-org", "r-none"]).items()} == {"r-org": True, "r-none": False}
    members = store.members("r-org")
    assert members["alice"] == Member(user_id="u-alice", is_bot=False, roles=["owner"])
    assert members["sales.bot"] == Member(user_id="u-sales.bot", is_bot=True, roles=["member"])
    assert sorted(members) == ["alice", "bob", "carol", "dave", "sales.bot"]
    assert store.members_of(["r-org", "r-plain", "r-none"]) == {"r-org": members, "r-plain": store.members("r-plain"), "r-none": {}}
    assert store.room_orgs("r-org") == {"org-sales"} and store.room_orgs("r-plain") == set()
    assert store.orgs_of(["r-org", "r-plain"]) == {"r-org": {"org-sales"}, "r-plain": set()}
    assert store.individual_ids("r-org") == {"u-alice", "u-bob", "u-sales.bot"}  # the requested users, not the org's
    assert store.individual_ids("r-plain") == set()  # no orgs: no rows


def test_a_store_that_is_away_raises_store_unavailable(db: Database[Document]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client: MongoClient[Document] = MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=300, retryWrites=False)
    away = RoomStore(client["chat_away"])
    claim = Site(db).claim("r-1", "req-1", "n1")
    try:
        for call in (lambda: away.users_by_accounts(["alice"]), lambda: away.record(claim, T0), lambda: away.apply(claim.outcome, T0)):
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert isinstance(caught.value.__cause__, PyMongoError)
    finally:
        client.close()
