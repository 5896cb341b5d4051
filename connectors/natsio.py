"""A per-process asyncio loop thread owning the NATS connections that Bytewax partitions share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
import time
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.errors import ServiceUnavailableError

from connectors.settings import NatsSettings, redact_url

log = logging.getLogger(__name__)


class _QuietTlsEof(logging.Filter):
    """nats-py's protocol returns True from eof_received, which asyncio's TLS transport warns about at every close of a
    TLS connection: harmless, and noise in every log and CLI output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTlsEof())

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_connections: dict[NatsSettings, Client] = {}
_violations: dict[NatsSettings, list[str]] = {}
_refusals: dict[NatsSettings, str] = {}  # the server refused our credentials while we were connecting


class NotPermitted(PermissionError):
    """The server refused a publish or subscribe of ours: a configuration fault, never retried."""


# NATS away, reconnecting or not answering, or JetStream unable to answer now (503). TimeoutError covers nats-py's own
# timeouts and `connection` giving up on an absent server; ConnectionError a refused or reset socket.
TRANSIENT_ERRORS: Final[tuple[type[Exception], ...]] = (
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.NoRespondersError,
    ServiceUnavailableError,
    TimeoutError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """NATS or JetStream away or overloaded: worth retrying. A refusal (`NotPermitted`) never is."""
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, NotPermitted)


def check_permissions(settings: NatsSettings) -> None:
    """Raise if the server reported a permissions violation on the shared connection for `settings`."""
    found = _violations.get(settings)
    if found:
        msg = f"NATS user {settings.user or '(none)'!r} at {redact_url(settings.url)}: {found[0]}"
        raise NotPermitted(msg)


def _certificate_refused(exc: BaseException) -> bool:
    """The server's certificate failed our check, or the server refused ours (a TLS alert about a certificate); not a
    handshake cut short by a server going away, which is transient."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    return isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(getattr(exc, "reason", None) or "").upper()


def loop() -> asyncio.AbstractEventLoop:
    """The process's NATS event loop, started on first use in a daemon thread."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new_loop = asyncio.new_event_loop()
            thread = threading.Thread(target=new_loop.run_forever, name="chatfed-nats", daemon=True)
            thread.start()
            _loop = new_loop
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the NATS loop and wait for its result (re-raising its exception here)."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result(timeout)


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """The TLS context for `settings`: verify the server against `tls_ca` (else the system's CAs) and present the
    client certificate if there is one; None for a plaintext `nats://` URL without any TLS setting."""
    if not (settings.url.startswith("tls://") or settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca or None)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return context


def connect_options(settings: NatsSettings, *, name: str, keep_trying: bool) -> dict[str, Any]:
    """nats-py options for `settings`: a flow reconnects forever, a command-line tool gives up quickly."""
    options: dict[str, Any] = {"servers": [settings.url], "name": name, "connect_timeout": 5}
    if keep_trying:
        options |= {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "pending_size": 64 * 1024 * 1024}
    else:
        options |= {"max_reconnect_attempts": 1, "reconnect_time_wait": 0.5}
    if settings.user:
        options |= {"user": settings.user, "password": settings.password}
    if settings.creds:
        options["user_credentials"] = settings.creds
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def _refusal(exc: BaseException) -> bool:
    """A refused login or certificate: retrying cannot help."""
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text or _certificate_refused(exc)


async def connect(settings: NatsSettings, *, name: str = "chatfed-cli", timeout: float = 15) -> Client:
    """A short-lived connection for a tool: fails fast when the server refuses or is away.

    Raises NotPermitted on a refused login or certificate and TimeoutError after `timeout`: nats-py alone retries a
    failed TLS handshake forever, whatever `max_reconnect_attempts` says.
    """
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        if _refusal(exc) and not refused.done():
            refused.set_result(str(exc))

    attempt = asyncio.ensure_future(nats.connect(error_cb=on_error, **connect_options(settings, name=name, keep_trying=False)))
    done, _ = await asyncio.wait({attempt, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if attempt in done:
        refused.cancel()
        return attempt.result()
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    where = f"NATS at {redact_url(settings.url)}"
    if refused.done():
        raise NotPermitted(f"{where} refused user {settings.user or '(none)'!r}: {refused.result()}")
    raise TimeoutError(f"{where} not reachable within {timeout:g} s")


async def _connect(settings: NatsSettings) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", redact_url(settings.url), exc)
        if "permissions violation" in str(exc).lower():  # the flow would wait forever: stop it loudly instead
            _violations.setdefault(settings, []).append(str(exc))
        if _refusal(exc):
            _refusals[settings] = str(exc)  # a refused login or certificate: retrying cannot help

    return await nats.connect(error_cb=on_error, **connect_options(settings, name="chatfed", keep_trying=True))


def connection(settings: NatsSettings, timeout: float = 30) -> Client:
    """The shared connection for `settings`, opened on first use.

    Raises TimeoutError when the server stays away for `timeout` (the attempt is cancelled, not left running),
    NotPermitted at once when it refuses the credentials or a TLS handshake fails on a certificate (nats-py alone
    would retry them forever).
    """
    with _lock:
        existing = _connections.get(settings)
    if existing is not None and not existing.is_closed:
        return existing
    _refusals.pop(settings, None)
    future = asyncio.run_coroutine_threadsafe(_connect(settings), loop())
    deadline = time.monotonic() + timeout
    while not future.done():
        concurrent.futures.wait([future], timeout=0.25)
        refused = _refusals.get(settings)
        if not future.done() and (refused is not None or time.monotonic() >= deadline):
            future.cancel()
            if refused is not None:
                msg = f"NATS at {redact_url(settings.url)} refused user {settings.user or '(none)'!r}: {refused}"
                raise NotPermitted(msg) from None
            msg = f"NATS at {redact_url(settings.url)} not reachable within {timeout:g} s"
            raise TimeoutError(msg) from None
    client = future.result()
    with _lock:
        _connections[settings] = client
    return client
