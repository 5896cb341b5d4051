"""The MongoDB protocol locked down (issue 14): FerretDB asks every client to log in (SCRAM-SHA-256) and listens only on a
unix socket in a folder no other OS user may enter, because it does not tell its users apart (no roles)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from pymongo import MongoClient, uri_parser
from pymongo.errors import OperationFailure

from testkit.clients import mongo_client

QUICK = {"serverSelectionTimeoutMS": 5_000, "connectTimeoutMS": 5_000}


def _socket(servers: dict[str, Any]) -> Path:
    [(host, _)] = uri_parser.parse_uri(servers["mongo_uri"])["nodelist"]
    assert host.endswith(".sock"), f"FerretDB should listen on a unix socket, not {host}"
    return Path(host)


def test_no_login_a_wrong_password_or_plain_text_gets_no_data(servers: dict[str, Any]) -> None:
    database = f"chatfed_test_{uuid.uuid4().hex[:10]}"
    with mongo_client(servers, **QUICK) as own:
        own[database].probe.insert_one({"_id": "secret", "v": 1})
        try:
            attempts = {
                "anonymous": MongoClient(servers["mongo_uri"], **QUICK),
                "wrong password": MongoClient(servers["mongo_uri"], username=servers["mongo_user"], password="wrong-" + uuid.uuid4().hex, **QUICK),
                "unknown user": MongoClient(servers["mongo_uri"], username="intruder", password="x", **QUICK),
                "PLAIN": MongoClient(servers["mongo_uri"], username=servers["mongo_user"], password=servers["mongo_password"], authMechanism="PLAIN", **QUICK),
            }
            for name, client in attempts.items():
                try:
                    with pytest.raises(OperationFailure) as refused:
                        client[database].probe.find_one({"_id": "secret"})
                    assert refused.value.code in {13, 18, 334}, f"{name}: {refused.value}"  # unauthorized / auth failed / mechanism
                    with pytest.raises(OperationFailure):
                        client[database].probe.insert_one({"_id": f"by-{name}"})
                finally:
                    client.close()
            assert [d["_id"] for d in own[database].probe.find()] == ["secret"]
        finally:
            own.drop_database(database)


def test_only_this_os_user_reaches_the_socket_and_the_files(servers: dict[str, Any]) -> None:
    sock = _socket(servers)
    folders = [sock.parent]
    if sock.parent.name == "ferretdb" and sock.parents[1].name == "run":  # STATE/run/ferretdb/db.sock: STATE/data/ferretdb
        folders.append(sock.parents[2] / "data" / "ferretdb")
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid(), folder
    assert _connect_as(None, sock) == "connected"
    if os.geteuid() != 0:
        return  # no other user to become: the modes above are the proof
    other = next(name for name in ("nobody", "chatfed-es") if _exists(name))
    assert _connect_as(other, sock) == "PermissionError"


def _connect_as(user: str | None, sock: Path) -> str:
    """Try to connect to `sock` from a child process running as `user` (None: as we are)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become `user`, try, report, leave at once
        outcome = b"?"
        try:
            os.close(read)
            if user is not None:
                entry = pwd.getpwnam(user)
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(sock))
            outcome = b"connected"
        except OSError as exc:
            outcome = type(exc).__name__.encode()
        finally:
            os.write(write, outcome)
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def test_on_postgresql_its_socket_and_data_are_the_server_users_alone(servers: dict[str, Any]) -> None:
    """FerretDB's PostgreSQL (CHATFED_MONGO_BACKEND=postgresql) trusts whoever reaches its socket: a 0700 folder of its
    own OS user (chatfed-pg under root), no TCP port. Nothing to check on SQLite or an external MongoDB."""
    if servers.get("mongo_backend") != "postgresql":
        return
    query = parse_qs(urlparse(servers["postgres_url"]).query)
    folder, port = Path(query["host"][0]), int(query["port"][0])
    owner = pwd.getpwnam("chatfed-pg").pw_uid if os.geteuid() == 0 else os.geteuid()
    data = [folder.parents[1] / "data" / "postgres"] if folder.name == "postgres" and folder.parent.name == "run" else []
    for path in (folder, *data):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700 and path.stat().st_uid == owner, path
    with socket.socket() as tcp:  # listen_addresses is empty
        assert tcp.connect_ex(("127.0.0.1", port)) != 0
    sock = folder / f".s.PGSQL.{port}"
    assert _connect_as(None, sock) == "connected"
    if os.geteuid() == 0:
        other = next(name for name in ("nobody", "chatfed-es") if _exists(name))
        assert _connect_as(other, sock) == "PermissionError"
