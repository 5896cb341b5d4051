"""Clients of the servers a test was given (`services.py info`, the `servers` fixture), with their TLS and users.

Every server of ours is TLS-only and authenticated: tests build their clients here rather than from bare URLs.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import msgspec
import nats
from elasticsearch import Elasticsearch
from nats.aio.client import Client
from pymongo import MongoClient

from chatfed_cli.topology import Topology, topology_of
from connectors.elastic import elastic_client
from connectors.mongo import Document
from connectors.mongo import client as mongo_client_for
from connectors.natsio import tls_context
from connectors.settings import ElasticSettings, MongoSettings, NatsSettings


def topology(servers: Mapping[str, Any]) -> Topology:
    return topology_of(dict(servers))


def info_of_test_site(servers: Mapping[str, Any], site: str) -> dict[str, Any]:
    """The `services info` entry of test site `site`, which lives on s1's NATS server outside the subjects (and search
    views) s1's service users may use: its flows run as the operators, of NATS and of Elasticsearch."""
    s1 = servers["sites"]["s1"]
    return {
        **s1,
        "mongo_db": f"chat_{site}",
        "domain": site,
        "service_user": s1["nats_user"],
        "service_password": s1["nats_password"],
        "es_service_user": "",
        "es_service_password": "",
    }


def nats_settings(servers: Mapping[str, Any], site: str, *, role: str = "operator") -> NatsSettings:
    """`site`'s NATS as its operator (manages the site) or, with role="service", as the flows' user."""
    info = topology(servers).sites[site]
    return info.operator() if role == "operator" else info.service()


def nats_tls(servers: Mapping[str, Any], site: str) -> dict[str, ssl.SSLContext]:
    """`tls=` for a raw `nats.connect` to `site`'s server: our CA, the site's client certificate."""
    context = tls_context(nats_settings(servers, site))
    return {"tls": context} if context is not None else {}


async def connect_nats(settings: NatsSettings, **options: Any) -> Client:
    """A test's connection: reconnects forever unless `options` say otherwise."""
    credentials = {"user": settings.user, "password": settings.password} if settings.user else {}
    context = tls_context(settings)
    tls = {"tls": context} if context is not None else {}
    return await nats.connect(settings.url, **{"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, **credentials, **tls, **options})


def es_settings(servers: Mapping[str, Any], **overrides: Any) -> ElasticSettings:
    """Elasticsearch as its operator (the CLI's user)."""
    return msgspec.structs.replace(topology(servers).elastic(), **overrides)


def es_search_sync_settings(servers: Mapping[str, Any], site: str) -> ElasticSettings:
    """Elasticsearch as `site`'s search_sync user (a real site of `servers`)."""
    return topology(servers).search_sync_elastic(site)


def es_client(servers: Mapping[str, Any], **options: Any) -> Elasticsearch:
    client = elastic_client(es_settings(servers))
    return client.options(**options) if options else client


def mongo_settings(servers: Mapping[str, Any], database: str = "") -> MongoSettings:
    """The MongoDB server as its user (FerretDB: the one user there is)."""
    t = topology(servers)
    return MongoSettings(uri=t.mongo_uri, database=database, username=t.mongo_user, password=t.mongo_password, tls_ca_file=t.mongo_tls_ca)


def mongo_client(servers: Mapping[str, Any], **options: Any) -> MongoClient[Document]:
    """A new client (the caller closes it); `options` go to MongoClient (e.g. serverSelectionTimeoutMS)."""
    return mongo_client_for(mongo_settings(servers), **options)
