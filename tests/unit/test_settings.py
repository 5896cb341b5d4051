"""Settings come from CHATFED_* variables; bad values name the variable; secrets stay out of logs."""

from __future__ import annotations

import pytest

from connectors.errors import ConfigError
from connectors.settings import load_settings, redact_url

BASE = {"CHATFED_SITE_ID": "s1", "CHATFED_NATS_URL": "nats://127.0.0.1:4222"}


def test_defaults_derive_from_the_site() -> None:
    settings = load_settings(BASE)
    assert settings.mongo.database == "chat_s1"
    assert settings.elastic.user_room_index == "user-room-s1"
    assert settings.elastic.spotlight_index == "spotlight-s1"
    assert settings.tuning.flush_ms < 1000


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CHATFED_NATS_URL": "nats://x"}, "CHATFED_SITE_ID"),
        ({"CHATFED_SITE_ID": "s1"}, "CHATFED_NATS_URL"),
        ({**BASE, "CHATFED_SITE_ID": "S.1"}, "CHATFED_SITE_ID"),
        ({**BASE, "CHATFED_FLUSH_MS": "soon"}, "CHATFED_FLUSH_MS"),
        ({**BASE, "CHATFED_MAX_DELIVER": "0"}, "CHATFED_MAX_DELIVER"),
    ],
    ids=["no-site", "no-nats", "bad-site", "not-int", "out-of-range"],
)
def test_bad_configuration_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_flow_without_a_store_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="CHATFED_ES_URL"):
        load_settings(BASE).require_elastic()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://app:s3cret@db:27017/chat", "mongodb://app:***@db:27017/chat"),
        ("http://elastic:pw@127.0.0.1:9200", "http://elastic:***@127.0.0.1:9200"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("", ""),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_describe_never_contains_a_secret() -> None:
    env = {
        **BASE,
        "CHATFED_NATS_PASSWORD": "natspw",
        "CHATFED_MONGO_URI": "mongodb://u:mongopw@h/",
        "CHATFED_ES_URL": "http://e:espw@h:9200",
        "CHATFED_ES_API_KEY": "apikey",
    }
    described = repr(load_settings(env).describe())
    for secret in ("natspw", "mongopw", "espw", "apikey"):
        assert secret not in described


def test_tuning_alone_is_read_without_a_site_and_names_a_bad_variable() -> None:
    from connectors.settings import load_tuning, tuning_variable

    tuning = load_tuning({"CHATFED_MAX_DELIVER": "15", "CHATFED_ACK_WAIT_S": "45"})
    assert (tuning.max_deliver, tuning.ack_wait_s) == (15, 45)
    assert load_settings({**BASE, "CHATFED_MAX_DELIVER": "15"}).tuning.max_deliver == 15
    assert tuning_variable("ack_wait_s") == "CHATFED_ACK_WAIT_S"
    with pytest.raises(ConfigError, match="CHATFED_ACK_WAIT_S"):
        load_tuning({"CHATFED_ACK_WAIT_S": "0"})


def test_nats_tls_settings_round_trip_through_the_environment() -> None:
    from connectors.settings import nats_variables

    env = {
        **BASE,
        "CHATFED_NATS_URL": "tls://127.0.0.1:4222",
        "CHATFED_NATS_TLS_CA": "/pki/ca.crt",
        "CHATFED_NATS_TLS_CERT": "/pki/client.crt",
        "CHATFED_NATS_TLS_KEY": "/pki/client.key",
        "CHATFED_NATS_USER": "svc",
        "CHATFED_NATS_PASSWORD": "pw",
    }
    nats = load_settings(env).nats
    assert (nats.tls_ca, nats.tls_cert, nats.tls_key) == ("/pki/ca.crt", "/pki/client.crt", "/pki/client.key")
    assert load_settings({**BASE, **nats_variables(nats)}).nats == nats


def test_only_a_plaintext_url_without_tls_settings_connects_without_tls() -> None:
    from connectors.natsio import tls_context
    from connectors.settings import NatsSettings

    assert tls_context(NatsSettings(url="nats://127.0.0.1:4222")) is None
    assert tls_context(NatsSettings(url="tls://127.0.0.1:4222")) is not None  # the system's CAs


def test_a_refused_certificate_is_no_outage() -> None:
    import ssl

    from connectors.natsio import _certificate_refused

    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    cut_short = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert _certificate_refused(verify) and _certificate_refused(alert)
    assert not _certificate_refused(cut_short) and not _certificate_refused(ConnectionResetError())


def test_a_real_mongodb_gets_user_password_and_tls_from_the_settings() -> None:
    """CHATFED_MONGO_URI at a real MongoDB: CHATFED_MONGO_USER / _PASSWORD / _TLS_CA_FILE become the client's options, and
    any other option stays in the URI (authSource, tlsCertificateKeyFile, ...)."""
    from pymongo.auth_shared import MongoCredential

    from connectors.mongo import client

    env = {
        **BASE,
        "CHATFED_MONGO_URI": "mongodb://db.example:27017/?authSource=chat&replicaSet=rs0",
        "CHATFED_MONGO_USER": "flows",
        "CHATFED_MONGO_PASSWORD": "pw",
        "CHATFED_MONGO_TLS_CA_FILE": "/etc/ssl/certs/ca-certificates.crt",
    }
    mongo = client(load_settings(env).mongo, connect=False)
    try:
        credentials = mongo.options.pool_options._credentials
        assert isinstance(credentials, MongoCredential)
        assert (credentials.username, credentials.password, credentials.source) == ("flows", "pw", "chat")
        assert mongo.options.pool_options._ssl_context is not None  # TLS with that CA
        assert mongo.options.replica_set_name == "rs0"
    finally:
        mongo.close()
