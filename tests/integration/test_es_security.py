"""Elasticsearch with security on (issue 14): HTTPS with our CA, nobody anonymous, search_sync's user limited to its own
site's search views (read, write documents, refresh), the operator for everything else."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from elastic_transport import TransportError
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch

from connectors.elastic import elastic_client
from connectors.errors import ConfigError
from connectors.settings import ElasticSettings
from dataflows.search_sync import parts as search_parts
from dataflows.search_sync.indexes import SearchIndexes, ensure_installed
from dataflows.search_sync.writer import SearchViewsWriter
from schemas import names
from testkit.clients import es_client, es_search_sync_settings, es_settings
from testkit.search_oracle import added, delivery


def _status(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), context=context, timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_anonymous_and_wrong_password_get_401_and_plain_http_gets_nothing(servers: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=servers["es_ca"])
    base = servers["es_url"].rstrip("/")
    assert base.startswith("https://")
    for path in ("/", "/_cluster/health", f"/{names.user_room_alias('s1')}/_search"):
        assert _status(base + path, context) == 401, path
    with pytest.raises(AuthenticationException):
        es_client_with(servers, password="wrong-" + uuid.uuid4().hex).cluster.health()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # an HTTPS port: no HTTP answer in the clear
        urllib.request.urlopen(base.replace("https://", "http://") + "/", timeout=10)  # noqa: S310
    assert es_client(servers).cluster.health()["status"] in {"green", "yellow"}


def test_clients_refuse_a_server_certificate_outside_their_ca(servers: dict[str, Any]) -> None:
    system_cas = elastic_client(ElasticSettings(url=servers["es_url"], username=servers["es_user"], password=servers["es_password"]))
    with pytest.raises(TransportError) as refused:
        system_cas.options(max_retries=0).cluster.health()
    assert "certificate verify failed" in repr(refused.value.errors) + str(refused.value.__cause__ or refused.value.__context__), refused.value


def es_client_with(servers: dict[str, Any], **overrides: Any) -> Elasticsearch:
    return elastic_client(es_settings(servers, **overrides)).options(max_retries=0)


@pytest.fixture
def search_sync_s1(federated_sites: dict[str, Any]) -> Elasticsearch:
    """s1's search_sync user; federated_sites installed every real site's search views (as `chatfed bootstrap` does)."""
    settings = es_search_sync_settings(federated_sites, "s1")
    assert settings.username == federated_sites["sites"]["s1"]["es_service_user"] != federated_sites["es_user"]
    return elastic_client(settings).options(max_retries=0)


def test_search_sync_user_cannot_create_or_delete_indexes_or_change_templates(search_sync_s1: Elasticsearch, federated_sites: dict[str, Any]) -> None:
    operator = es_client(federated_sites)
    concrete = list(operator.indices.get_alias(name=names.user_room_alias("s1")))
    assert concrete
    refused = [
        lambda: search_sync_s1.indices.delete(index=concrete[0]),
        lambda: search_sync_s1.indices.delete(index=names.user_room_alias("s1")),
        lambda: search_sync_s1.indices.create(index=f"{names.user_room_alias('s1')}-v{uuid.uuid4().int % 10**9}"),
        lambda: search_sync_s1.indices.put_index_template(name="chatfed-x", index_patterns=["x-*"], template={}),
        lambda: search_sync_s1.indices.update_aliases(actions=[{"remove": {"index": concrete[0], "alias": names.user_room_alias("s1")}}]),
        lambda: search_sync_s1.cluster.put_settings(persistent={"cluster.routing.allocation.enable": "all"}),
    ]
    for attempt in refused:
        with pytest.raises(AuthorizationException):
            attempt()
    assert operator.indices.exists(index=concrete[0])
    assert list(operator.indices.get_alias(name=names.user_room_alias("s1"))) == concrete


def test_search_sync_user_cannot_touch_another_sites_views(search_sync_s1: Elasticsearch) -> None:
    other = SearchIndexes.for_site(ElasticSettings(), "s2")
    refused = [
        lambda: search_sync_s1.get(index=other.user_room, id="anyone"),
        lambda: search_sync_s1.search(index=other.spotlight, query={"match_all": {}}),
        lambda: search_sync_s1.index(index=other.spotlight, id="x", document={"roomId": "r"}),
        lambda: search_sync_s1.delete(index=other.user_room, id="anyone"),
        lambda: search_sync_s1.search(index="*", query={"match_all": {}}, size=1),  # resolves to its own views only
    ]
    for attempt in refused[:-1]:
        with pytest.raises(AuthorizationException):
            attempt()
    hits = refused[-1]()["hits"]["hits"]
    assert all(hit["_index"].split("-v")[0] in SearchIndexes.for_site(ElasticSettings(), "s1").aliases for hit in hits), hits


def test_search_sync_user_writes_its_own_views_and_needs_bootstrap_for_new_ones(search_sync_s1: Elasticsearch, federated_sites: dict[str, Any]) -> None:
    """What the flow does with its own user: the writer's read-plan-write on s1's views, and the start-up check."""
    site_indexes = SearchIndexes.for_site(ElasticSettings(), "s1")
    ensure_installed(search_sync_s1, site_indexes)  # present: nothing to do, nothing refused
    account, room = f"tls-{uuid.uuid4().hex[:8]}", f"r-{uuid.uuid4().hex[:8]}"
    writer = SearchViewsWriter(es_search_sync_settings(federated_sites, "s1"), site_indexes, flow="test_es_security")
    parsed = search_parts.parse(delivery(added(room, [account], 1_767_225_600_000, name="secured")))
    assert search_parts.is_parts(parsed), parsed
    outcomes = writer.write([(search_parts.part_key(part), [part]) for part in parsed])
    operator = es_client(federated_sites)
    try:
        assert outcomes and all(o.ok for o in outcomes), [o.reason for o in outcomes]
        assert room in operator.get(index=site_indexes.user_room, id=account)["_source"]["rooms"]
    finally:
        operator.delete(index=site_indexes.user_room, id=account, refresh=True)
        operator.indices.refresh(index=site_indexes.spotlight)
        for hit in operator.search(index=site_indexes.spotlight, query={"term": {"userAccount": account}})["hits"]["hits"]:
            operator.delete(index=hit["_index"], id=hit["_id"], refresh=True)
    missing = SearchIndexes(user_room=f"user-room-s1-v9{uuid.uuid4().int % 10**6}", spotlight="spotlight-s1-v9", room_names="room-names-s1-v9")
    with pytest.raises(ConfigError, match="chatfed bootstrap"):
        ensure_installed(search_sync_s1, missing)
