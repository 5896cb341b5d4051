"""Who may announce what on the aggregate lane: the origin check of issue 7 (a site only announces its own rooms)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from schemas.carriers import REPLAYED_STREAM_SOURCE

STREAM_SOURCE: Final = "Nats-Stream-Source"
_OUTBOX_PREFIX: Final = "OUTBOX_"


def sourced_from(headers: Mapping[str, str] | None) -> str | None:
    """The origin site of a sourced message: `OUTBOX_{origin}` as named by the header the server adds, else None.

    The header reads `OUTBOX_s1:<hash>:C=<hash> <seq> <filter> <dest> <subject> <hash>` (the `:<hash>` part only
    for a source in another domain, `:C=<hash>` for one bound to the origin's durable, as ours are). A dead letter
    replayed by the site's operator carries the original header as `Chatfed-Replayed-Stream-Source`.
    """
    found = headers or {}
    value = found.get(STREAM_SOURCE) or found.get(REPLAYED_STREAM_SOURCE, "")
    stream = value.split(" ", 1)[0].split(":", 1)[0]
    if not stream.startswith(_OUTBOX_PREFIX) or len(stream) == len(_OUTBOX_PREFIX):
        return None
    return stream[len(_OUTBOX_PREFIX) :]


def origin_problem(headers: Mapping[str, str] | None, *, envelope_site: str, room_site: str | None) -> str | None:
    """Why an aggregate-lane event must not be applied, or None when its claimed origin is proven.

    `room_site` is the inner event's `siteId` (the room's home) when the payload carries one.
    """
    origin = sourced_from(headers)
    if origin is None:
        return "origin unproven: aggregate-lane event without a Nats-Stream-Source header from an OUTBOX stream"
    if envelope_site != origin:
        return f"origin mismatch: envelope claims siteId {envelope_site!r} but was sourced from OUTBOX_{origin}"
    if room_site is not None and room_site != origin:
        return f"origin mismatch: OUTBOX_{origin} announced room homed on {room_site!r}"
    return None
