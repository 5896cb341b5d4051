"""The bulk rebuild's decode (chatfed_cli/parse_pool.py): worker processes give exactly what the flow's own `parse` gives."""

from __future__ import annotations

import asyncio

from chatfed_cli.nats_wire import Message, header_dict
from chatfed_cli.parse_pool import Parsers, parse_messages
from dataflows.search_sync import parts as search_parts
from schemas.carriers import Delivery
from testkit.search_oracle import added, removed, renamed

SOURCED = b"NATS/1.0\r\nNats-Stream-Source: OUTBOX_s1 12 chat.outbox.s1.> outbox.s1.to.s1.member_added x"


def _messages() -> list[Message]:
    local, aggregate = "chat.inbox.s1.member_added", "chat.inbox.s1.aggregate.member_added"
    return [
        Message(local, b"", added("r1", ["alice", "bob"], 10, name="one"), b""),
        Message(local, b"", removed("r1", ["bob"], 20), b""),
        Message(aggregate, SOURCED, added("r2", ["carol"], 30, hss=25), b""),  # origin proven by the header
        Message(aggregate, b"", added("r3", ["dave"], 40), b""),  # poison: no origin on the aggregate lane
        Message(local, b"", b"{not json", b""),  # poison
        Message("chat.inbox.s1.room_renamed", b"", renamed("r1", "uno", 50), b""),
        Message(local, b"", added("r4", ["bad.account"], 60), b""),  # poison: not a subject token
    ]


def test_inline_decode_is_the_flows_parse() -> None:
    parts, poison = parse_messages("INBOX_s1", _messages())
    expected: list[search_parts.Part] = []
    for msg in _messages():
        parsed = search_parts.parse(
            Delivery(subject=msg.subject, data=msg.data, reply="", stream="INBOX_s1", stream_seq=0, num_delivered=1, headers=header_dict(msg.headers))
        )
        if search_parts.is_parts(parsed):
            expected.extend(parsed)
    assert parts == expected
    assert poison == 3
    assert sorted(search_parts.part_key(p) for p in parts) == ["alice", "bob", "bob", "carol", "room r1"]


def test_workers_decode_exactly_as_inline() -> None:
    async def run() -> tuple[list[search_parts.Part], int]:
        parsers = Parsers(1)
        try:
            await parsers.start()
            return await parsers.parse("INBOX_s1", _messages())
        finally:
            parsers.close()

    pooled, pooled_poison = asyncio.run(run())
    inline, inline_poison = parse_messages("INBOX_s1", _messages())
    assert pooled_poison == inline_poison == 3
    assert sorted(pooled, key=repr) == sorted(inline, key=repr)
