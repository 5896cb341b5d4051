"""Flow process start-up: which failures are waited out, and how a library's retry tracebacks are thinned."""

from __future__ import annotations

import logging

import elastic_transport
import pytest
from nats.js.api import ConsumerConfig
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from connectors import runtime
from connectors.bootstrap import DurableMismatch, contract_problems
from connectors.errors import ConfigError
from connectors.natsio import NotPermitted
from connectors.runtime import TracebackOncePerOutage, is_transient, summary
from connectors.settings import Tuning


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ServerSelectionTimeoutError("127.0.0.1:37017: connection refused"), True),
        (elastic_transport.ConnectionError("refused"), True),
        (TimeoutError("NATS not reachable"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (OperationFailure("auth failed", code=18), False),
        (ConfigError("CHATFED_ES_URL is required"), False),
        (DurableMismatch("durable X has max_deliver=10 but CHATFED_MAX_DELIVER=15"), False),
        (NotPermitted("refused user"), False),
        (ValueError("bad"), False),
    ],
)
def test_only_an_absent_or_overloaded_server_is_waited_for(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_durable_with_another_contract_is_named_with_both_values() -> None:
    config = ConsumerConfig(durable_name="search-sync", max_deliver=10, ack_wait=60.0)
    assert contract_problems("INBOX_s1", "search-sync", config, Tuning(max_deliver=10)) == []
    problems = contract_problems("INBOX_s1", "search-sync", config, Tuning(max_deliver=15, ack_wait_s=45))
    assert problems == [
        "durable INBOX_s1/search-sync has max_deliver=10 but CHATFED_MAX_DELIVER=15",
        "durable INBOX_s1/search-sync has ack_wait_s=60 but CHATFED_ACK_WAIT_S=45",
    ]


def _record(created: float, exc: BaseException, level: int = logging.WARNING) -> logging.LogRecord:
    record = logging.LogRecord("elastic_transport.transport", level, __file__, 1, "Retrying request", None, (type(exc), exc, None))
    record.created = created
    return record


def test_a_retry_traceback_is_kept_once_per_outage() -> None:
    keep = TracebackOncePerOutage(quiet_s=600).filter
    refused = elastic_transport.ConnectionError("refused")
    assert keep(_record(0, refused))  # the outage's first: with its traceback
    assert not keep(_record(1, refused))
    assert not keep(_record(500, refused))  # still the same outage: each failure is 600 s from the last at most
    assert keep(_record(1200, refused))  # a new outage
    assert keep(_record(1201, refused, logging.ERROR))  # errors always pass
    assert keep(logging.LogRecord("x", logging.WARNING, __file__, 1, "no exception", None, None))


def test_summary_is_one_short_line() -> None:
    line = summary(ValueError("a\nlong\n" + "x" * 1000))
    assert "\n" not in line and line.startswith("ValueError: a long ") and len(line) < 320


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.mark.parametrize(
    ("env", "expected"), [({}, [(-3, 65_536), (-1, 131_072)]), ({"MALLOC_MMAP_THRESHOLD_": "1"}, [(-1, 131_072)])], ids=["defaults", "env wins"]
)
def test_a_flow_process_sets_glibc_thresholds_the_environment_leaves_alone(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[tuple[int, int]]
) -> None:
    """Issue 12: large freed blocks go back to the system (connectors/runtime.py `_MALLOC_OPTIONS`)."""
    libc = _Libc()
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: libc)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runtime.return_freed_memory()
    assert libc.calls == expected
