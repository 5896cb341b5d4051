"""The one error raised by every decode function in `schemas`."""

from __future__ import annotations

from typing import TypeVar

import msgspec

T = TypeVar("T")


class DecodeError(ValueError):
    """A message or document that cannot be decoded into its wire type.

    The text names what was decoded, then msgspec's reason with its JSON path,
    e.g. ``envelope: Object missing required field `siteId` ``; it is meant to be
    used as the dead-letter reason as is (SYSTEM.md §6).
    """


def decode_or_raise(decoder: msgspec.json.Decoder[T], data: bytes, what: str) -> T:
    """Decode `data` with `decoder`, turning every failure into a `DecodeError`."""
    try:
        return decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        # invalid UTF-8 surfaces as UnicodeDecodeError, not as a msgspec error
        msg = f"{what}: {exc}"
        raise DecodeError(msg) from exc
