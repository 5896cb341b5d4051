"""Session fixtures describing the servers that ./run.sh started (scripts/services.py info), and a module's own
servers for the tests that stop and start them (own_servers)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _mongo_answers(info: dict[str, Any]) -> bool:
    """MongoDB lets its user in (FerretDB: a unix socket)."""
    from pymongo.errors import PyMongoError

    from testkit.clients import mongo_client

    try:
        with mongo_client(info, serverSelectionTimeoutMS=5_000) as client:
            client.list_database_names()
    except PyMongoError:
        return False
    return True


def _es_answers(info: dict[str, Any]) -> bool:
    """Elasticsearch answers its operator (HTTPS, our CA)."""
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    from testkit.clients import es_client

    try:
        with es_client(info, request_timeout=5) as es:
            es.cluster.health()
    except (ApiError, TransportError):
        return False
    return True


def _unreachable(what: str, address: str, log: str) -> None:
    pytest.fail(
        f"{what} at {address} is not reachable (see {log}); start the servers with "
        f"`./run.sh services up` or run the tests with `./run.sh test`",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def servers() -> dict[str, Any]:
    """The `services.py info` description, after checking that every server in it answers."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), "info"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        pytest.fail(f"scripts/services.py info failed: {out.stderr.strip()}", pytrace=False)
    info: dict[str, Any] = json.loads(out.stdout)
    for site, desc in info["sites"].items():
        url = urlsplit(desc["nats_url"])
        if not _tcp_open(url.hostname or "127.0.0.1", url.port or 4222):
            _unreachable(f"NATS of site {site}", desc["nats_url"], f".local/logs/nats-{site}.log")
    if not _mongo_answers(info):
        _unreachable("MongoDB (FerretDB)", info["mongo_uri"], ".local/logs/ferretdb.log")
    if not _es_answers(info):
        _unreachable("Elasticsearch", info["es_url"], ".local/logs/es.log and .local/logs/es/")
    return info


@pytest.fixture(scope="session")
def es_url(servers: dict[str, Any]) -> str:
    """Base URL of Elasticsearch."""
    return str(servers["es_url"])


@pytest.fixture(scope="session")
def mongo_uri(servers: dict[str, Any]) -> str:
    """MongoDB connection string (FerretDB locally)."""
    return str(servers["mongo_uri"])


@pytest.fixture(scope="session")
def site_urls(servers: dict[str, Any]) -> dict[str, str]:
    """NATS client URL of each site, in CHATFED_SITES order."""
    return {site: desc["nats_url"] for site, desc in servers["sites"].items()}


@pytest.fixture(scope="session")
def federated_sites(servers: dict[str, Any]) -> dict[str, Any]:
    """The real sites of `servers`, bootstrapped federated (each its own domain, sourcing over leafnodes)."""
    from testkit.support import bootstrap_federated

    asyncio.run(bootstrap_federated(servers))
    return servers


@pytest.fixture(scope="module")
def own_servers(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A private set of servers for one test module (testkit/private_servers.py): outage tests stop these, never the
    shared ones. The module's OWN_SERVERS names the kinds it needs of its own (default all); the rest are shared."""
    from testkit.private_servers import KINDS, private_servers

    own = getattr(request.module, "OWN_SERVERS", KINDS)
    shared = request.getfixturevalue("servers") if set(own) != set(KINDS) else None
    with private_servers(request.module.__name__.rsplit(".", 1)[-1], own, shared) as servers:
        yield servers
