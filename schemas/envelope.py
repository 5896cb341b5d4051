"""The `OutboxEvent` envelope carried by every OUTBOX and INBOX message, and Go-identical JSON."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import msgspec

from schemas.errors import decode_or_raise


class EventType(StrEnum):
    """Envelope `type` values this project publishes; the wire field stays `str` (STYLE §2)."""

    MEMBER_ADDED = "member_added"
    MEMBER_REMOVED = "member_removed"
    ROLE_UPDATED = "role_updated"
    ROOM_RENAMED = "room_renamed"


class OutboxEvent(msgspec.Struct, rename="camel", kw_only=True):
    """Envelope of SYSTEM.md §2.1; `payload` holds the inner event's JSON bytes."""

    type: str
    site_id: str
    dest_site_id: str
    # bytes <-> standard padded base64, exactly Go's []byte encoding
    payload: bytes
    timestamp: Annotated[int, msgspec.Meta(gt=0)]


_ENCODER: Final = msgspec.json.Encoder()
ENVELOPE_DECODER: Final = msgspec.json.Decoder(OutboxEvent)

# Go's encoding/json escapes these inside strings; msgspec writes them raw. None of them can
# occur outside a JSON string (keys included), so a bytes replace is exact.
_GO_ESCAPES: Final = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_escape(data: bytes) -> bytes:
    """Rewrite msgspec JSON output into the bytes Go's `json.Marshal` gives for the same value."""
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def encode_go_json(value: msgspec.Struct) -> bytes:
    """Encode a wire struct to JSON byte-identical to Go's `json.Marshal`."""
    return go_escape(_ENCODER.encode(value))


def encode_envelope(event: OutboxEvent) -> bytes:
    """Encode an envelope as a Go publisher would."""
    return encode_go_json(event)


def decode_envelope(data: bytes) -> OutboxEvent:
    """Decode an envelope; raises `DecodeError` (bad JSON or base64, missing field, timestamp <= 0)."""
    return decode_or_raise(ENVELOPE_DECODER, data, "envelope")
