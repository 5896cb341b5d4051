"""A bare NATS connection that only pulls: the bulk rebuild's way to read a whole stream fast.

nats-py turns every message into a `Msg` (its own parser, header dict, queue, callback task): about 24 us per
message, more than the rest of a rebuild together. Here a pull request's answer is parsed straight out of the
socket's bytes, about 1 us a message: a `MSG` / `HMSG` control line, the payload sliced, headers kept as their raw
block (only the aggregate lane reads one). The control plane (consumers, stream info) stays on nats-py.

Supports what chatfed's sites use: user / password (settings or URL), no auth, TLS when the URL says `tls://` or the
server requires it (the CA and client certificate of the settings, as `natsio.tls_context`). Not .creds (nats-py
needs the `nkeys` package for those, which chatfed does not install).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final
from urllib.parse import unquote, urlsplit

import msgspec

from connectors import natsio
from connectors.settings import NatsSettings, redact_url

READ_BYTES: Final = 1 << 20
_CRLF: Final = b"\r\n"


class WireError(RuntimeError):
    """The server refused us or sent something a pull never gets."""


class Message(msgspec.Struct, array_like=True, gc=False):
    """One delivered message: its subject, its raw header block (b"" when none), its payload, its reply subject."""

    subject: str
    headers: bytes
    data: bytes
    reply: bytes


class Status(msgspec.Struct, frozen=True, gc=False):
    """A status answer to a pull request (`NATS/1.0 404 No Messages`, 408, 409 ...)."""

    code: int
    text: str


def header_dict(block: bytes) -> dict[str, str] | None:
    """The headers of a raw `NATS/1.0` block as nats-py gives them (the last value of a repeated key wins)."""
    if not block:
        return None
    headers: dict[str, str] = {}
    for line in block.decode().split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers or None


def pending_of(reply: bytes) -> int:
    """`num_pending` after a message, from its `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>` reply."""
    return int(reply.rsplit(b".", 1)[1]) if reply.startswith(b"$JS.ACK.") else -1


class Wire:
    """One subscription over a raw socket; `request` publishes, `read` returns what arrived (messages and statuses)."""

    def __init__(self, settings: NatsSettings, *, name: str) -> None:
        if settings.creds:
            raise WireError("the bulk rebuild's reader supports user / password or no auth, not a .creds file")
        self._settings, self._name = settings, name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = b""
        self._sid = b"1"

    async def open(self, inbox: str) -> None:
        url = urlsplit(self._settings.url if "://" in self._settings.url else f"nats://{self._settings.url}")
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=READ_BYTES), 5)
        line = await asyncio.wait_for(self._reader.readline(), 5)
        if not line.startswith(b"INFO "):
            raise WireError(f"{redact_url(self._settings.url)}: expected INFO, got {line[:80]!r}")
        info = msgspec.json.decode(line[5:])
        if url.scheme == "tls" or info.get("tls_required"):
            await self._writer.start_tls(natsio.tls_context(self._settings) or ssl.create_default_context(), server_hostname=host)
        connect: dict[str, object] = {
            "verbose": False, "pedantic": False, "name": self._name, "lang": "python", "version": "chatfed",
            "protocol": 1, "headers": True, "no_responders": True, "tls_required": url.scheme == "tls" or bool(info.get("tls_required")),
        }
        user, password = self._settings.user or unquote(url.username or ""), self._settings.password or unquote(url.password or "")
        if user:
            connect |= {"user": user, "pass": password}
        self._writer.write(b"CONNECT " + msgspec.json.encode(connect) + b"\r\nPING\r\n")
        await self._writer.drain()
        while True:  # +OK / INFO may come first; -ERR is a refusal
            answer = await asyncio.wait_for(self._reader.readline(), 5)
            if not answer:
                raise WireError(f"{redact_url(self._settings.url)}: connection closed while connecting")
            if answer.startswith(b"-ERR"):
                raise WireError(f"{redact_url(self._settings.url)}: {answer.decode().strip()}")
            if answer.startswith(b"PONG"):
                break
        self._writer.write(b"SUB %s %s\r\n" % (inbox.encode(), self._sid))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass  # going away anyway
            self._writer = None

    async def request(self, subject: str, reply: str, body: bytes) -> None:
        assert self._writer is not None
        self._writer.write(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(body), body))
        await self._writer.drain()

    async def read(self, out: list[Message], statuses: list[Status]) -> None:
        """Wait for bytes, then append every complete message (and status) they hold; answers the server's PINGs."""
        assert self._reader is not None and self._writer is not None
        data = await self._reader.read(READ_BYTES)
        if not data:
            raise WireError(f"{redact_url(self._settings.url)}: connection closed")
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        find = buf.find
        while True:
            eol = find(_CRLF, pos)
            if eol < 0:
                break
            op = buf[pos : pos + 4]
            if op == b"MSG " or op == b"HMSG":
                args = buf[pos:eol].split()
                start = eol + 2
                end = start + int(args[-1])
                if end + 2 > size:
                    break  # the payload is not all here yet
                if op == b"MSG ":
                    out.append(Message(args[1].decode(), b"", buf[start:end], args[3] if len(args) == 5 else b""))
                else:
                    split = start + int(args[-2])
                    if split == end and buf[start + 8 : start + 9] == b" ":  # no payload, a status line: NATS/1.0 404 ...
                        status = buf[start + 9 : buf.find(_CRLF, start)].decode()
                        code, _, text = status.partition(" ")
                        statuses.append(Status(int(code), text))
                    else:
                        out.append(Message(args[1].decode(), buf[start : split - 4], buf[split:end], args[3] if len(args) == 6 else b""))
                pos = end + 2
                continue
            if op == b"PING":
                self._writer.write(b"PONG\r\n")
            elif op == b"-ERR":
                raise WireError(f"{redact_url(self._settings.url)}: {buf[pos:eol].decode()}")
            pos = eol + 2  # PONG, +OK, INFO
        self._buf = buf[pos:]
