"""What every flow process does before it builds its graph: logging, settings, clean stop, metrics, and a start-up
that waits for its stores instead of dying when one is down."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Final

import tenacity
from bytewax.dataflow import Dataflow

from connectors import elastic, metrics, mongo, natsio
from connectors.bootstrap import check_durable
from connectors.errors import ConfigError
from connectors.settings import Settings, load_settings
from schemas import names, streams

log = logging.getLogger(__name__)

# elasticsearch's client logs every request at INFO, and every failure several times (a retry warning with the
# whole traceback, two node-pool warnings): during an outage, megabytes of them. The flows log their own line per
# failed attempt, so the client keeps only its warnings, and its retry traceback once per outage.
_QUIET_LEVELS: Final = {"elastic_transport.transport": logging.WARNING, "elastic_transport.node_pool": logging.ERROR}
_RETRY_LOGGERS: Final = ("elastic_transport.transport",)
_OUTAGE_QUIET_S: Final = 600.0  # a retry failure after this long without one starts a new outage: traceback again
_SUMMARY_CHARS: Final = 300
_CHECK_TIMEOUT_S: Final = 10
# the only flow a rebuild points at another durable (CHATFED_DURABLE); the others ignore the setting
_REPOINTABLE: Final = frozenset({names.SEARCH_SYNC_FLOW})


def summary(exc: BaseException) -> str:
    """`Type: message` on one line, cut short: what a retry logs instead of a traceback."""
    text = " ".join(str(exc).split())
    if len(text) > _SUMMARY_CHARS:
        text = text[: _SUMMARY_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TracebackOncePerOutage(logging.Filter):
    """A library's retry warnings: the first of an outage passes with its traceback, the repeats are dropped.

    An outage is a run of failures of one exception type less than `quiet_s` apart. Errors always pass.
    """

    def __init__(self, quiet_s: float = _OUTAGE_QUIET_S) -> None:
        super().__init__()
        self._quiet_s = quiet_s
        self._last: dict[type[BaseException], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None or record.levelno >= logging.ERROR:
            return True
        kind = type(record.exc_info[1])
        last = self._last.get(kind)
        self._last[kind] = record.created
        return last is None or record.created - last > self._quiet_s


def quiet_library_retries() -> None:
    for name, level in _QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for name in _RETRY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TracebackOncePerOutage) for f in logger.filters):
            logger.addFilter(TracebackOncePerOutage())


def is_transient(exc: BaseException) -> bool:
    """A store or NATS that is away or overloaded: worth waiting for. Bad configuration and refusals are not.

    Each store module classifies its own errors; an error raised `from` a transient one (a store's own
    "unavailable" class) is transient too.
    """
    if isinstance(exc, (ConfigError, natsio.NotPermitted)):
        return False
    if mongo.is_transient(exc) or elastic.is_transient(exc) or natsio.is_transient(exc):
        return True
    return exc.__cause__ is not None and is_transient(exc.__cause__)


def stop_cleanly(flow: str) -> None:
    """SIGTERM (and SIGINT) stop the process with one log line and exit status 0.

    Bytewax turns a signal into a worker panic, a Rust backtrace and `BytewaxRuntimeError: signal received`, and
    runs no `close()` on an interrupt anyway (FINDINGS). Nothing is lost by exiting at once instead: what was
    pulled and not yet acknowledged stays un-acked and is redelivered (SYSTEM.md §6: even kill -9 loses nothing).
    """
    flow_log = logging.getLogger(f"dataflows.{flow}")

    def stop(signum: int, frame: FrameType | None) -> None:
        flow_log.info(
            "%s stopped on %s; messages in flight were not acknowledged and are redelivered after the durable's ack_wait",
            flow,
            signal.Signals(signum).name,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    # SIGINT too: a process started with SIGINT ignored (a background job) must still stop on it (FINDINGS)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# glibc's malloc raises its mmap threshold (up to 32 MB) after each large block it frees, then serves every later
# large block (a bulk body, an mget response) from the heap, whose freed middle it never gives back: a search_sync
# process kept ~15 MB more after 300k backlogged events (issue 12). A fixed threshold keeps them mmap'd (returned
# on free) and trims the heap's top sooner. An environment that sets either itself (MALLOC_*_) wins.
_MALLOC_OPTIONS: Final = (("MALLOC_MMAP_THRESHOLD_", -3, 64 * 1024), ("MALLOC_TRIM_THRESHOLD_", -1, 128 * 1024))


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the system (`_MALLOC_OPTIONS`); nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    for env_name, param, value in _MALLOC_OPTIONS:
        if env_name not in os.environ and mallopt(param, value) != 1:
            log.warning("mallopt(%d, %d) refused", param, value)


def start_process(flow: str) -> Settings:
    """Prepare this process to run `flow`; start-up logs only the non-secret settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_freed_memory()
    quiet_library_retries()
    stop_cleanly(flow)
    settings = load_settings()
    metrics.serve(settings.tuning.metrics_port)
    logging.getLogger(f"dataflows.{flow}").info("%s starting: %s", flow, settings.describe())
    return settings


def check_contract(flow: str, settings: Settings) -> None:
    """Refuse a durable whose max_deliver or ack_wait differ from the settings (DurableMismatch, never retried)."""
    spec = streams.flow_consumer(settings.site, flow)
    durable = settings.durable if settings.durable and flow in _REPOINTABLE else spec.durable
    client = natsio.connection(settings.nats)
    try:
        natsio.run(check_durable(client.jetstream(), spec.stream, durable, settings.tuning), timeout=_CHECK_TIMEOUT_S)
    except TimeoutError:
        natsio.check_permissions(settings.nats)  # a refused request times out: say so instead of retrying forever
        raise


def build_when_ready(flow: str, settings: Settings, build: Callable[[Settings], Dataflow]) -> Dataflow:
    """Check the durable and build the graph, retrying with backoff while a store or NATS is away.

    One log line per failed attempt; permanent errors (bad configuration, refused credentials, a durable with
    another delivery contract) are raised at once.
    """
    flow_log = logging.getLogger(f"dataflows.{flow}")
    base_s = settings.tuning.backoff_base_ms / 1000
    max_s = max(settings.tuning.backoff_max_ms / 1000, base_s)

    def waiting(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        flow_log.warning(
            "%s cannot start yet (attempt %d): %s; retrying in %.1f s", flow, state.attempt_number, summary(exc or Exception()), delay
        )

    def attempt() -> Dataflow:
        check_contract(flow, settings)
        return build(settings)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential(multiplier=base_s, min=base_s, max=max_s) + tenacity.wait_random(0, base_s),
        before_sleep=waiting,
        reraise=True,
    )
    dataflow = retrying(attempt)
    attempts = retrying.statistics.get("attempt_number", 1)
    if attempts > 1:
        flow_log.info("%s: stores reachable after %d attempts", flow, attempts)
    return dataflow


def flow_attribute(flow: str, build: Callable[[Settings], Dataflow]) -> Callable[[str], Dataflow]:
    """A module `__getattr__` that builds `flow` from the settings once, when `python -m bytewax.run` asks.

    Lazy, so tests import `build_flow` with no environment and no servers. A configuration fault ends the
    process with one error line and exit status 2.
    """
    built: list[Dataflow] = []

    def getattr_(name: str) -> Dataflow:
        if name != "flow":
            raise AttributeError(name)
        if not built:
            try:
                built.append(build_when_ready(flow, start_process(flow), build))
            except ConfigError as exc:
                logging.getLogger(f"dataflows.{flow}").error("%s cannot start: %s", flow, exc)  # noqa: TRY400 - one line
                raise SystemExit(2) from None
        return built[0]

    return getattr_
