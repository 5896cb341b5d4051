"""A TCP proxy that delays every request to a server: a real store made slow, without hooks in the code under test."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType


class SlowProxy:
    """Listens on 127.0.0.1:`port`; forwards to `upstream`, holding each client→server chunk `delay_s` first."""

    def __init__(self, upstream_host: str, upstream_port: int, delay_s: float, *, upstream_unix: str = "") -> None:
        """`upstream_unix`: a unix socket path to forward to instead of host and port (FerretDB)."""
        self.upstream = (upstream_host, upstream_port)
        self.upstream_unix = upstream_unix
        self.delay_s = delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slow-proxy")
        self._server: asyncio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.upstream_unix:
            server_r, server_w = await asyncio.open_unix_connection(self.upstream_unix)
        else:
            server_r, server_w = await asyncio.open_connection(*self.upstream)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
            try:
                while chunk := await reader.read(65536):
                    if delay:
                        await asyncio.sleep(delay)  # the slowness is the point: a slow store
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                pass  # the other side went away: close both
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, server_w, self.delay_s), pipe(server_r, client_w, 0))

    def __enter__(self) -> SlowProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
