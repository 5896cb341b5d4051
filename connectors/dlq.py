"""Read and replay a site's dead-letter stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from schemas import carriers, names


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One message of `DLQ_{site}` and what its headers say about the original."""

    seq: int
    flow: str
    reason: str
    subject: str
    stream: str
    stream_seq: int
    deliveries: int
    headers: dict[str, str]
    data: bytes


_DLQ_HEADERS = frozenset(
    {
        carriers.DLQ_REASON,
        carriers.DLQ_SUBJECT,
        carriers.DLQ_STREAM,
        carriers.DLQ_SEQUENCE,
        carriers.DLQ_DELIVERIES,
        carriers.DLQ_FLOW,
        carriers.DLQ_ORIGINAL_MSG_ID,
        carriers.DLQ_STREAM_SOURCE,
        "Nats-Msg-Id",
    }
)


def _dead_letter(seq: int, headers: dict[str, str], data: bytes) -> DeadLetter:
    return DeadLetter(
        seq=seq,
        flow=headers.get(carriers.DLQ_FLOW, ""),
        reason=headers.get(carriers.DLQ_REASON, ""),
        subject=headers.get(carriers.DLQ_SUBJECT, ""),
        stream=headers.get(carriers.DLQ_STREAM, ""),
        stream_seq=int(headers.get(carriers.DLQ_SEQUENCE, "0") or 0),
        deliveries=int(headers.get(carriers.DLQ_DELIVERIES, "0") or 0),
        headers=headers,
        data=data,
    )


async def list_dead_letters(client: Client, site: str, *, limit: int = 1000) -> list[DeadLetter]:
    """The dead letters of `site`, oldest first (at most `limit`)."""
    js = client.jetstream()
    stream = names.dlq_stream(site)
    info = await js.stream_info(stream)
    found: list[DeadLetter] = []
    if not info.state.messages:
        return found
    seq = max(info.state.first_seq, 1)
    while seq <= info.state.last_seq and len(found) < limit:
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:  # deleted (e.g. replayed) messages leave gaps
            seq += 1
            continue
        found.append(_dead_letter(seq, dict(msg.headers or {}), msg.data or b""))
        seq += 1
    return found


def replay_headers(letter: DeadLetter) -> dict[str, str]:
    """The original headers, with a fresh dedup id: the original id is still inside the stream's window."""
    headers = {key: value for key, value in letter.headers.items() if key not in _DLQ_HEADERS}
    headers["Nats-Msg-Id"] = f"replay:{letter.stream}:{letter.stream_seq}:{uuid.uuid4().hex}"
    source = letter.headers.get(carriers.DLQ_STREAM_SOURCE)
    if source:
        headers[carriers.REPLAYED_STREAM_SOURCE] = source
    return headers


async def replay(client: Client, site: str, letters: Iterable[DeadLetter], *, keep: bool = False) -> int:
    """Publish each letter back to its original subject; delete it from the DLQ unless `keep`."""
    js = client.jetstream()
    replayed = 0
    for letter in letters:
        if not letter.subject:
            raise ValueError(f"dead letter {letter.seq} has no {carriers.DLQ_SUBJECT} header; cannot replay it")
        await js.publish(letter.subject, letter.data, headers=replay_headers(letter))
        if not keep:
            await js.delete_msg(names.dlq_stream(site), letter.seq)
        replayed += 1
    return replayed
