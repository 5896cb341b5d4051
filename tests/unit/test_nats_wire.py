"""The bulk rebuild's bare NATS reader (chatfed_cli/nats_wire.py) against a fake server that cuts its frames anywhere."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatfed_cli.nats_wire import Message, Status, Wire, WireError, header_dict, pending_of
from connectors.settings import NatsSettings

INBOX = "_INBOX.test"


def _frames(messages: list[tuple[str, bytes, bytes, str]], status: str | None) -> bytes:
    out = bytearray()
    for subject, headers, data, reply in messages:
        if headers:
            block = headers + b"\r\n\r\n"
            out += f"HMSG {subject} 1 {reply} {len(block)} {len(block) + len(data)}\r\n".encode() + block + data + b"\r\n"
        else:
            out += f"MSG {subject} 1 {reply} {len(data)}\r\n".encode() + data + b"\r\n"
        out += b"PING\r\n+OK\r\n"  # a server PING (answered), an +OK (ignored) between messages
    if status:
        block = f"NATS/1.0 {status}\r\n\r\n".encode()
        out += f"HMSG {INBOX} 1 {len(block)} {len(block)}\r\n".encode() + block + b"\r\n"
    return bytes(out)


async def _serve(payload: bytes, cuts: random.Random, seen: list[bytes]) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","headers":true,"auth_required":true} \r\n')
        connect = await reader.readline()
        seen.append(connect)
        assert await reader.readline() == b"PING\r\n"
        writer.write(b"+OK\r\nPONG\r\n")
        seen.append(await reader.readline())  # SUB
        seen.append(await reader.readline())  # PUB ... (the pull request)
        seen.append(await reader.readline())  # its body
        at = 0
        while at < len(payload):  # the frames cut at random places, one write each
            step = cuts.randint(1, 700)
            writer.write(payload[at : at + step])
            await writer.drain()
            await asyncio.sleep(0)
            at += step
        seen.append(await reader.read(6 * 100))  # the PONGs
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


_SUBJECTS = st.sampled_from(["chat.inbox.s1.member_added", "chat.inbox.s1.aggregate.member_removed"])
_DATA = st.binary(max_size=300)
_HEADERS = st.sampled_from([b"", b"NATS/1.0\r\nNats-Stream-Source: OUTBOX_s1 7 x y z", b"NATS/1.0\r\nA: 1\r\nB:  two "])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(_SUBJECTS, _HEADERS, _DATA), max_size=40),
    st.sampled_from([None, "404 No Messages", "408 Request Timeout"]),
    st.integers(0, 2**32),
)
def test_read_returns_every_message_whatever_the_cuts(items: list[tuple[str, bytes, bytes]], status: str | None, seed: int) -> None:
    messages = [(subject, headers, data, f"$JS.ACK.S.C.1.{i + 1}.{i + 1}.0.{len(items) - i - 1}") for i, (subject, headers, data) in enumerate(items)]

    async def run() -> tuple[list[Message], list[Status], list[bytes]]:
        seen: list[bytes] = []
        server, port = await _serve(_frames(messages, status), random.Random(seed), seen)
        wire = Wire(NatsSettings(url=f"nats://127.0.0.1:{port}", user="op", password="secret"), name="test")
        got: list[Message] = []
        statuses: list[Status] = []
        try:
            await wire.open(INBOX)
            await wire.request("$JS.API.CONSUMER.MSG.NEXT.S.C", INBOX, b'{"batch":10}')
            while len(got) < len(messages) or (status and not statuses):
                await asyncio.wait_for(wire.read(got, statuses), 5)
        finally:
            await wire.close()
            server.close()
        return got, statuses, seen

    got, statuses, seen = asyncio.run(run())
    assert [(m.subject, m.headers, m.data, m.reply.decode()) for m in got] == messages
    assert statuses == ([Status(int(status[:3]), status[4:])] if status else [])
    connect = msgspec.json.decode(seen[0].removeprefix(b"CONNECT "))
    assert (connect["user"], connect["pass"], connect["headers"]) == ("op", "secret", True)
    assert seen[1] == f"SUB {INBOX} 1\r\n".encode()
    assert seen[2] == f"PUB $JS.API.CONSUMER.MSG.NEXT.S.C {INBOX} 12\r\n".encode()
    if messages:
        assert pending_of(got[-1].reply) == 0
        assert pending_of(got[0].reply) == len(messages) - 1


def test_header_dict_reads_a_raw_block_as_nats_py_does() -> None:
    assert header_dict(b"") is None
    assert header_dict(b"NATS/1.0\r\nNats-Stream-Source: OUTBOX_s1 7 x\r\nB:  two ") == {"Nats-Stream-Source": "OUTBOX_s1 7 x", "B": "two"}


def test_a_refusal_is_an_error() -> None:
    async def run() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b'INFO {"server_id":"x"}\r\n')
            await reader.readline()
            writer.write(b"-ERR 'Authorization Violation'\r\n")
            await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        wire = Wire(NatsSettings(url=f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"), name="test")
        try:
            with pytest.raises(WireError, match="Authorization Violation"):
                await wire.open(INBOX)
        finally:
            await wire.close()
            server.close()

    asyncio.run(run())


def test_creds_are_refused_up_front() -> None:
    with pytest.raises(WireError, match="creds"):
        Wire(NatsSettings(url="nats://127.0.0.1:4222", creds="/some/user.creds"), name="test")
