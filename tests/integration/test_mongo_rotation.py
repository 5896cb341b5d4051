"""`services rotate-secrets` renews FerretDB's user on either backend (CHATFED_MONGO_BACKEND): the next start creates it
with the new password, the old one is refused, the data stays. On a private NATS + FerretDB (+ its PostgreSQL)."""

from __future__ import annotations

import json
import uuid

import pytest
from pymongo.errors import OperationFailure

from testkit.clients import mongo_client
from testkit.private_servers import PrivateServers

OWN_SERVERS = ("nats", "ferretdb")
QUICK = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 5_000}


@pytest.mark.slow
def test_rotate_secrets_renews_the_ferretdb_user_and_keeps_the_data(own_servers: PrivateServers) -> None:
    before = dict(own_servers.info)
    database = f"chatfed_test_{uuid.uuid4().hex[:10]}"
    with mongo_client(before, **QUICK) as client:
        client[database].probe.insert_one({"_id": "kept"})

    own_servers.services("down", *own_servers.names)
    own_servers.services("rotate-secrets")
    own_servers.services("up")
    after = json.loads(own_servers.services("info"))
    own_servers.info = after

    assert after["mongo_password"] != before["mongo_password"]
    with mongo_client(after, **QUICK) as client:
        assert [d["_id"] for d in client[database].probe.find()] == ["kept"]
        client.drop_database(database)
    with mongo_client(before, **QUICK) as stale, pytest.raises(OperationFailure):
        stale[database].probe.find_one()
