"""Elasticsearch plumbing shared by every user of the search views: the client and the transient-error rule."""

from __future__ import annotations

from typing import Any, Final

import elastic_transport
import msgspec
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer

from connectors.settings import ElasticSettings


class _MsgspecJson(JsonSerializer):
    """msgspec instead of the stdlib `json`: encoding bulk bodies and decoding mget responses was a quarter of the flow's CPU."""

    def json_dumps(self, data: Any) -> bytes:
        return ENCODER.encode(data)

    def json_loads(self, data: bytes) -> Any:
        return msgspec.json.decode(data)


class _MsgspecNdjson(NdjsonSerializer):
    def json_dumps(self, data: Any) -> bytes:
        return ENCODER.encode(data)

    def json_loads(self, data: bytes) -> Any:
        return msgspec.json.decode(data)


ENCODER: Final = msgspec.json.Encoder()


def elastic_client(settings: ElasticSettings) -> Elasticsearch:
    """A client for `settings`; one retry only, since a failed batch is retried by JetStream redelivery."""
    options: dict[str, Any] = {
        "request_timeout": 30,
        "max_retries": 1,
        "retry_on_timeout": True,
        "serializers": {JsonSerializer.mimetype: _MsgspecJson(), NdjsonSerializer.mimetype: _MsgspecNdjson()},
    }
    if settings.api_key:
        options["api_key"] = settings.api_key
    elif settings.username:
        options["basic_auth"] = (settings.username, settings.password)
    if settings.ca_certs:
        options["ca_certs"] = settings.ca_certs
    if not settings.verify_certs:
        options["verify_certs"] = False
    return Elasticsearch(settings.url, **options)


def is_transient(exc: BaseException) -> bool:
    """Connection trouble, 429 and 5xx are worth retrying; anything else is our fault."""
    if isinstance(exc, (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout)):
        return True
    return isinstance(exc, ApiError) and (exc.meta.status == 429 or exc.meta.status >= 500)
