"""One typed settings object, loaded from `CHATFED_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from connectors.errors import ConfigError
from schemas import names, streams

PositiveInt = Annotated[int, Meta(gt=0)]


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    url: str  # tls://host:port: TLS from the start of the session
    user: str = ""
    password: str = ""
    creds: str = ""  # path to a .creds file
    tls_ca: str = ""  # CA file the server's certificate must chain to (empty: the system's CAs)
    tls_cert: str = ""  # client certificate and key, for servers that verify clients (ours do)
    tls_key: str = ""


class MongoSettings(msgspec.Struct, frozen=True, kw_only=True):
    uri: str = ""
    database: str = ""
    username: str = ""
    password: str = ""
    tls_ca_file: str = ""


class ElasticSettings(msgspec.Struct, frozen=True, kw_only=True):
    url: str = ""
    username: str = ""
    password: str = ""
    api_key: str = ""
    ca_certs: str = ""
    verify_certs: bool = True
    user_room_index: str = ""
    spotlight_index: str = ""
    room_names_index: str = ""


class Tuning(msgspec.Struct, frozen=True, kw_only=True):
    pull_batch: PositiveInt = 500  # messages asked for per pull request
    pull_expires_ms: PositiveInt = 30_000
    pull_heartbeat_ms: PositiveInt = 5_000
    max_buffered: PositiveInt = 20_000  # stop asking for more while this many wait for Bytewax
    flush_ms: PositiveInt = 100  # coalescing deadline of a lone event
    flush_max: PositiveInt = 2_000  # changes coalesced per key before a forced flush
    write_lanes: PositiveInt = 2  # search_sync: disjoint sets of accounts written by concurrent bulks (writer.py)
    ack_wait_s: PositiveInt = streams.ACK_WAIT_S
    max_deliver: PositiveInt = streams.MAX_DELIVER
    backoff_base_ms: PositiveInt = 500
    backoff_max_ms: PositiveInt = 30_000
    metrics_port: Annotated[int, Meta(ge=0)] = 0  # 0: no metrics endpoint
    event_max_accounts: PositiveInt = streams.EVENT_MAX_ACCOUNTS  # room_worker: accounts per member event, more are split


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    durable: str  # "" = the flow's own durable; a rebuild points search_sync at a temporary one
    nats: NatsSettings
    mongo: MongoSettings
    elastic: ElasticSettings
    tuning: Tuning

    def require_mongo(self) -> MongoSettings:
        if not self.mongo.uri:
            raise ConfigError("CHATFED_MONGO_URI is required by this flow")
        return self.mongo

    def require_elastic(self) -> ElasticSettings:
        if not self.elastic.url:
            raise ConfigError("CHATFED_ES_URL is required by this flow")
        return self.elastic

    def describe(self) -> dict[str, str]:
        """Non-secret fields, safe to log."""
        return {
            "site": self.site,
            "nats": redact_url(self.nats.url),
            "nats_user": self.nats.user or "-",
            "mongo": redact_url(self.mongo.uri) or "-",
            "mongo_db": self.mongo.database or "-",
            "mongo_user": self.mongo.username or "-",
            "es": redact_url(self.elastic.url) or "-",
            "es_user": self.elastic.username or "-",
        }


_TUNING_VARS: Final = {
    "pull_batch": "CHATFED_PULL_BATCH",
    "pull_expires_ms": "CHATFED_PULL_EXPIRES_MS",
    "pull_heartbeat_ms": "CHATFED_PULL_HEARTBEAT_MS",
    "max_buffered": "CHATFED_MAX_BUFFERED",
    "flush_ms": "CHATFED_FLUSH_MS",
    "flush_max": "CHATFED_FLUSH_MAX",
    "write_lanes": "CHATFED_WRITE_LANES",
    "ack_wait_s": "CHATFED_ACK_WAIT_S",
    "max_deliver": "CHATFED_MAX_DELIVER",
    "backoff_base_ms": "CHATFED_BACKOFF_BASE_MS",
    "backoff_max_ms": "CHATFED_BACKOFF_MAX_MS",
    "metrics_port": "CHATFED_METRICS_PORT",
    "event_max_accounts": "CHATFED_EVENT_MAX_ACCOUNTS",
}


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required")
    return value


def load_tuning(env: Mapping[str, str] = os.environ) -> Tuning:
    """Only the `Tuning` variables: what `chatfed bootstrap` needs to configure the durables the flows read."""
    tuning: dict[str, int] = {}
    for field, var in _TUNING_VARS.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            tuning[field] = int(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not an integer") from None
    try:
        return msgspec.convert(tuning, Tuning)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("$.", 1)[-1].strip("`")
        raise ConfigError(f"{_TUNING_VARS.get(field, field)}: {exc}") from None


def tuning_variable(field: str) -> str:
    """The environment variable that sets `Tuning.<field>`."""
    return _TUNING_VARS[field]


def nats_variables(nats: NatsSettings) -> dict[str, str]:
    """The CHATFED_NATS_* variables that `load_settings` reads back as `nats` (the empty ones left out)."""
    values = {
        "CHATFED_NATS_URL": nats.url,
        "CHATFED_NATS_USER": nats.user,
        "CHATFED_NATS_PASSWORD": nats.password,
        "CHATFED_NATS_CREDS": nats.creds,
        "CHATFED_NATS_TLS_CA": nats.tls_ca,
        "CHATFED_NATS_TLS_CERT": nats.tls_cert,
        "CHATFED_NATS_TLS_KEY": nats.tls_key,
    }
    return {k: v for k, v in values.items() if v}


def mongo_variables(mongo: MongoSettings) -> dict[str, str]:
    """The CHATFED_MONGO_* variables that `load_settings` reads back as `mongo` (the empty ones left out)."""
    values = {
        "CHATFED_MONGO_URI": mongo.uri,
        "CHATFED_MONGO_DB": mongo.database,
        "CHATFED_MONGO_USER": mongo.username,
        "CHATFED_MONGO_PASSWORD": mongo.password,
        "CHATFED_MONGO_TLS_CA_FILE": mongo.tls_ca_file,
    }
    return {k: v for k, v in values.items() if v}


def elastic_variables(elastic: ElasticSettings) -> dict[str, str]:
    """The CHATFED_ES_* connection variables that `load_settings` reads back as `elastic` (the empty ones left out)."""
    values = {
        "CHATFED_ES_URL": elastic.url,
        "CHATFED_ES_USER": elastic.username,
        "CHATFED_ES_PASSWORD": elastic.password,
        "CHATFED_ES_API_KEY": elastic.api_key,
        "CHATFED_ES_CA_CERTS": elastic.ca_certs,
        "CHATFED_ES_VERIFY_CERTS": "" if elastic.verify_certs else "false",
    }
    return {k: v for k, v in values.items() if v}


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Read the settings; raise ConfigError naming the variable at fault."""
    site = _required(env, "CHATFED_SITE_ID")
    if not names.is_valid_site_id(site):
        raise ConfigError(f"CHATFED_SITE_ID={site!r}: use lowercase letters, digits and '-' (not first)")
    tuned = load_tuning(env)
    return Settings(
        site=site,
        durable=env.get("CHATFED_DURABLE", ""),
        nats=NatsSettings(
            url=_required(env, "CHATFED_NATS_URL"),
            user=env.get("CHATFED_NATS_USER", ""),
            password=env.get("CHATFED_NATS_PASSWORD", ""),
            creds=env.get("CHATFED_NATS_CREDS", ""),
            tls_ca=env.get("CHATFED_NATS_TLS_CA", ""),
            tls_cert=env.get("CHATFED_NATS_TLS_CERT", ""),
            tls_key=env.get("CHATFED_NATS_TLS_KEY", ""),
        ),
        mongo=MongoSettings(
            uri=env.get("CHATFED_MONGO_URI", ""),
            database=env.get("CHATFED_MONGO_DB", "") or names.mongo_database(site),
            username=env.get("CHATFED_MONGO_USER", ""),
            password=env.get("CHATFED_MONGO_PASSWORD", ""),
            tls_ca_file=env.get("CHATFED_MONGO_TLS_CA_FILE", ""),
        ),
        elastic=ElasticSettings(
            url=env.get("CHATFED_ES_URL", ""),
            username=env.get("CHATFED_ES_USER", ""),
            password=env.get("CHATFED_ES_PASSWORD", ""),
            api_key=env.get("CHATFED_ES_API_KEY", ""),
            ca_certs=env.get("CHATFED_ES_CA_CERTS", ""),
            verify_certs=env.get("CHATFED_ES_VERIFY_CERTS", "true").lower() not in {"0", "false", "no"},
            user_room_index=env.get("CHATFED_USER_ROOM_INDEX", "") or names.user_room_alias(site),
            spotlight_index=env.get("CHATFED_SPOTLIGHT_INDEX", "") or names.spotlight_alias(site),
            room_names_index=env.get("CHATFED_ROOM_NAMES_INDEX", "") or names.room_names_alias(site),
        ),
        tuning=tuned,
    )
