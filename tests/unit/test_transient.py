"""One transient-error rule per store (mongo, elastic, natsio); start-up waits for what any of them calls transient."""

from __future__ import annotations

import elastic_transport
import nats.errors
import pytest
from elasticsearch import ApiError
from nats.js.errors import ServiceUnavailableError
from pymongo.errors import DuplicateKeyError, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from connectors import elastic, mongo, natsio, runtime
from connectors.errors import ConfigError


def _es_status(status: int) -> ApiError:
    meta = elastic_transport.ApiResponseMeta(status=status, http_version="1.1", headers=elastic_transport.HttpHeaders(), duration=0.0, node=None)  # type: ignore[arg-type]
    return ApiError(f"status {status}", meta, {})


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ServerSelectionTimeoutError("no servers"), True),
        (NetworkTimeout("timed out"), True),
        (OperationFailure("auth failed", code=18), False),
        (DuplicateKeyError("dup"), False),
    ],
    ids=["server-selection", "network-timeout", "auth", "duplicate-key"],
)
def test_mongo(exc: BaseException, transient: bool) -> None:
    assert mongo.is_transient(exc) is transient
    assert isinstance(exc, mongo.TRANSIENT_ERRORS) is transient  # what `except TRANSIENT_ERRORS` catches is the same set


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (elastic_transport.ConnectionError("refused"), True),
        (elastic_transport.ConnectionTimeout("slow"), True),
        (_es_status(429), True),
        (_es_status(503), True),
        (_es_status(400), False),
        (_es_status(404), False),
    ],
    ids=["refused", "timeout", "429", "503", "400", "404"],
)
def test_elastic(exc: BaseException, transient: bool) -> None:
    assert elastic.is_transient(exc) is transient


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (nats.errors.NoServersError(), True),
        (nats.errors.TimeoutError(), True),
        (nats.errors.FlushTimeoutError(), True),
        (nats.errors.NoRespondersError(), True),
        (ServiceUnavailableError(), True),
        (ConnectionRefusedError(111, "refused"), True),
        (natsio.NotPermitted("refused user"), False),
        (nats.errors.BadSubjectError(), False),
    ],
    ids=["no-servers", "timeout", "flush-timeout", "no-responders", "jetstream-503", "refused", "not-permitted", "bad-subject"],
)
def test_natsio(exc: BaseException, transient: bool) -> None:
    assert natsio.is_transient(exc) is transient


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as raised:  # noqa: BLE001 - building the chain the way a store wrapper does
        return raised


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_raised_from(RuntimeError("room store unavailable"), ServerSelectionTimeoutError("down")), True),
        (_raised_from(RuntimeError("bulk failed"), _es_status(503)), True),
        (_raised_from(RuntimeError("bad document"), ValueError("x")), False),
        (_raised_from(ConfigError("CHATFED_NATS_URL"), TimeoutError("x")), False),
    ],
    ids=["wrapped-mongo", "wrapped-elastic", "wrapped-bug", "config-never"],
)
def test_start_up_combines_the_stores_and_follows_the_cause(exc: BaseException, transient: bool) -> None:
    assert runtime.is_transient(exc) is transient
