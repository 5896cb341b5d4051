"""A per-process asyncio loop thread owning the NATS connections that Bytewax partitions share."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client

from connectors.settings import NatsSettings, redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_connections: dict[NatsSettings, Client] = {}


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


async def _connect(settings: NatsSettings) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", redact_url(settings.url), exc)

    options: dict[str, Any] = {
        "servers": [settings.url],
        "name": "chatfed",
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": on_error,
        "allow_reconnect": True,
        "pending_size": 64 * 1024 * 1024,
    }
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password
    if settings.creds:
        options["user_credentials"] = settings.creds
    return await nats.connect(**options)


def connection(settings: NatsSettings) -> Client:
    """The shared connection for `settings`, opened on first use."""
    with _lock:
        existing = _connections.get(settings)
    if existing is not None and not existing.is_closed:
        return existing
    client = run(_connect(settings), timeout=30)
    with _lock:
        _connections[settings] = client
    return client
