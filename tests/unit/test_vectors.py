"""Golden vectors shared with the Go services: decode gives the values, encode gives the bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import subjects
from schemas.envelope import OutboxEvent, decode_envelope, encode_envelope
from schemas.events import (
    InnerEvent,
    MemberAddEvent,
    MemberRemoveEvent,
    decode_payload,
    encode_event,
)

VECTORS_DIR = Path(__file__).parents[3] / "shared" / "vectors"
VECTOR_PATHS = sorted(VECTORS_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _inner_type(vector: dict[str, Any]) -> type[InnerEvent]:
    return MemberAddEvent if vector["envelope"]["type"] == "member_added" else MemberRemoveEvent


def _envelope(vector: dict[str, Any]) -> OutboxEvent:
    fields = dict(vector["envelope"])
    fields["payload"] = base64.b64decode(fields["payload"], validate=True)
    return msgspec.convert(fields, OutboxEvent)


def test_vectors_exist() -> None:
    assert len(VECTOR_PATHS) >= 8, VECTORS_DIR


@pytest.fixture(params=VECTOR_PATHS, ids=[p.stem for p in VECTOR_PATHS])
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    return _load(path)


def test_inner_encodes_to_inner_bytes(vector: dict[str, Any]) -> None:
    inner = msgspec.convert(vector["inner"], _inner_type(vector))
    assert encode_event(inner) == vector["innerBytes"].encode()


def test_envelope_encodes_to_data(vector: dict[str, Any]) -> None:
    assert encode_envelope(_envelope(vector)) == vector["data"].encode()


def test_data_decodes_to_envelope_and_inner(vector: dict[str, Any]) -> None:
    envelope = decode_envelope(vector["data"].encode())
    assert envelope == _envelope(vector)
    assert envelope.payload == vector["innerBytes"].encode()
    inner = decode_payload(envelope)
    assert inner == msgspec.convert(vector["inner"], _inner_type(vector))
    assert msgspec.to_builtins(inner) == vector["inner"]


def test_subject_matches_builder(vector: dict[str, Any]) -> None:
    env = vector["envelope"]
    if vector["subject"].startswith("outbox."):
        built = subjects.outbox(origin=env["siteId"], dest=env["destSiteId"], event_type=env["type"])
    else:
        assert env["siteId"] == env["destSiteId"], "the local lane never leaves the home site"
        built = subjects.inbox_local(env["siteId"], env["type"])
    assert built == vector["subject"]
    if "aggregateSubject" in vector.get("expect", {}):
        assert vector["expect"]["aggregateSubject"] == subjects.inbox_aggregate(
            env["destSiteId"], env["type"]
        )


def test_msg_id_is_request_id_and_dest_site(vector: dict[str, Any]) -> None:
    request_id, _, dest = vector["headers"]["Nats-Msg-Id"].rpartition(":")
    assert request_id
    assert dest == vector["envelope"]["destSiteId"]
