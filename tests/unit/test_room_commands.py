"""Decoding room commands from deliveries: dispatch by suffix, request ids, dedup seeds and rejections."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataflows.room_worker.commands import (
    Command,
    Rejected,
    operation_of,
    parse_command,
    payload_seed,
    valid_request_id,
)
from schemas.carriers import Delivery
from schemas.commands import AddMembers, CreateRoom, RemoveMember, RenameRoom, UpdateRole

RID = "0195f0a2-7c1d-7e3a-9b41-5d2c8e6f1a20"
CREATE = {"name": "eng", "users": ["bob"], "roomId": "r1", "requesterAccount": "alice", "timestamp": 5}
ADD = {"roomId": "r1", "users": ["bob"], "requesterAccount": "alice", "timestamp": 6}
REMOVE = {"roomId": "r1", "requester": "alice", "account": "bob", "timestamp": 7}
ROLE = {"roomId": "r1", "account": "bob", "newRole": "owner", "requesterId": "u-alice", "requesterAccount": "alice", "timestamp": 8}
RENAME = {"roomId": "r1", "newName": "eng 2", "requesterId": "u-alice", "requesterAccount": "alice", "timestamp": 9}


def _delivery(suffix: str, body: Any, headers: dict[str, str] | None = None) -> Delivery:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(subject=f"chat.room.canonical.s1.{suffix}", data=data, reply="r", stream="ROOMS_s1", stream_seq=1, num_delivered=1, headers=headers)


def _parse(delivery: Delivery) -> Command | Rejected:
    return parse_command(delivery, site="s1", mint_id=lambda: "minted", now_ms=99)


@pytest.mark.parametrize(
    ("suffix", "body", "kind", "operation"),
    [
        ("create", CREATE, CreateRoom, "room.create"),
        ("member.add", ADD, AddMembers, "room.member.add"),
        ("member.remove", REMOVE, RemoveMember, "room.member.remove"),
        ("member.remove", {**REMOVE, "account": "", "orgId": "o"}, RemoveMember, "room.member.remove_org"),
        ("member.role-update", ROLE, UpdateRole, "room.member.role_update"),
        ("rename", RENAME, RenameRoom, "room.rename"),
    ],
    ids=["create", "add", "remove_one", "remove_org", "role_update", "rename"],
)
def test_suffix_picks_the_command(suffix: str, body: dict[str, Any], kind: type, operation: str) -> None:
    parsed = _parse(_delivery(suffix, body, {"X-Request-ID": RID}))
    assert isinstance(parsed, Command)
    assert isinstance(parsed.body, kind)
    assert (parsed.request_id, parsed.dedup_base, parsed.room_id) == (RID, RID, "r1")
    assert operation_of(parsed.body).value == operation


@pytest.mark.parametrize(
    ("header", "expected"),
    [(RID, RID), (RID.upper(), RID), ("not-a-uuid", ""), ("", ""), (None, ""), (RID.replace("-", ""), "")],
    ids=["uuid", "upper", "garbage", "empty", "missing", "unhyphenated"],
)
def test_request_id_must_be_a_hyphenated_uuid(header: str | None, expected: str) -> None:
    assert valid_request_id(header) == expected


@pytest.mark.parametrize(
    ("suffix", "body", "seed"),
    [("create", CREATE, "r1:alice:5"), ("member.add", ADD, "r1:alice:6"), ("member.remove", REMOVE, "r1:bob:7"),
     ("member.remove", {**REMOVE, "account": "", "orgId": "o"}, "r1:o:7"),
     ("member.role-update", ROLE, "r1:bob:owner:8"), ("rename", RENAME, "r1:alice:9:rename")],
    ids=["create", "add", "remove_one", "remove_org", "role_update", "rename"],
)
def test_without_request_id_a_fresh_one_answers_and_the_payload_seed_dedups(suffix: str, body: dict[str, Any], seed: str) -> None:
    parsed = _parse(_delivery(suffix, body))
    assert isinstance(parsed, Command)
    assert (parsed.request_id, parsed.dedup_base) == ("minted", seed)
    assert payload_seed(parsed.body) == seed


@pytest.mark.parametrize(
    ("suffix", "body", "result_to"),
    [
        ("create", b"{not json", ""),
        ("create", {**CREATE, "timestamp": 0}, "alice"),
        ("member.add", {"users": ["x"], "requesterAccount": "alice", "timestamp": 1}, "alice"),
        ("member.remove", {**REMOVE, "orgId": "o"}, "alice"),
        ("member.remove", {**REMOVE, "account": ""}, "alice"),
        ("create", {**CREATE, "requesterAccount": "a.b", "timestamp": "x"}, ""),
        ("member.role-update", {**ROLE, "newRole": "admin"}, "alice"),
        ("member.role-update", {**ROLE, "account": ""}, "alice"),
        ("rename", {**RENAME, "newName": None}, "alice"),
    ],
    ids=["bad_json", "zero_timestamp", "no_room", "both_targets", "no_target", "untokenable_requester", "unknown_role", "role_no_account", "rename_no_name"],
)
def test_malformed_commands_are_rejected_with_a_bad_request_result_when_possible(suffix: str, body: Any, result_to: str) -> None:
    parsed = _parse(_delivery(suffix, body, {"X-Request-ID": RID}))
    assert isinstance(parsed, Rejected)
    assert not parsed.ignored and parsed.reason.startswith("bad_request: ")
    assert parsed.requester == result_to
    if result_to:
        assert parsed.result is not None
        assert (parsed.result.status, parsed.result.code, parsed.result.request_id) == ("error", "bad_request", RID)
    else:
        assert parsed.result is None


@pytest.mark.parametrize("subject", ["chat.room.canonical.s1.event.member.muted", "chat.room.canonical.s2.create"], ids=["unknown_suffix", "other_site"])
def test_other_subjects_are_ignored(subject: str) -> None:
    delivery = Delivery(subject=subject, data=b"{}", reply="r", stream="ROOMS_s1", stream_seq=1, num_delivered=1)
    parsed = _parse(delivery)
    assert isinstance(parsed, Rejected) and parsed.ignored


BAD_CHARS = {"dot": ".", "star": "*", "gt": ">", "space": " "}


@pytest.mark.parametrize("bad", list(BAD_CHARS.values()), ids=list(BAD_CHARS))
@pytest.mark.parametrize(
    ("suffix", "body", "field"),
    [
        ("create", CREATE, "roomId"),
        ("create", CREATE, "users"),
        ("member.add", ADD, "roomId"),
        ("member.add", ADD, "users"),
        ("member.add", {**ADD, "orgs": ["o"]}, "orgs"),
        ("member.remove", REMOVE, "roomId"),
        ("member.remove", REMOVE, "account"),
        ("member.remove", {**REMOVE, "account": "", "orgId": "o"}, "orgId"),
        ("member.role-update", ROLE, "roomId"),
        ("member.role-update", ROLE, "account"),
        ("rename", RENAME, "roomId"),
        ("member.add", {**ADD, "channels": [{"roomId": "r-src", "siteId": "s1"}]}, "channels"),
    ],
    ids=["create-room", "create-user", "add-room", "add-user", "add-org", "remove-room", "remove-account", "remove-org",
         "role-room", "role-account", "rename-room", "add-channel"],
)
def test_untokenable_ids_are_refused_with_bad_request(suffix: str, body: dict[str, Any], field: str, bad: str) -> None:
    value = body[field]
    if field == "channels":
        tainted: Any = [{"roomId": f"r{bad}x", "siteId": "s1"}]
    else:
        tainted = [f"{value[0]}{bad}x"] if isinstance(value, list) else f"{value}{bad}x"
    parsed = _parse(_delivery(suffix, {**body, field: tainted}, {"X-Request-ID": RID}))
    assert isinstance(parsed, Rejected) and not parsed.ignored
    assert parsed.reason.startswith("bad_request: invalid")
    assert parsed.requester == "alice" and parsed.result is not None
    assert (parsed.result.status, parsed.result.code, parsed.result.request_id) == ("error", "bad_request", RID)


@pytest.mark.parametrize("bad", list(BAD_CHARS.values()), ids=list(BAD_CHARS))
@pytest.mark.parametrize(("suffix", "body", "field"), [("create", CREATE, "requesterAccount"), ("member.remove", REMOVE, "requester")], ids=["create", "remove"])
def test_untokenable_requester_is_dead_lettered_without_a_result(suffix: str, body: dict[str, Any], field: str, bad: str) -> None:
    parsed = _parse(_delivery(suffix, {**body, field: f"al{bad}ice"}, {"X-Request-ID": RID}))
    assert isinstance(parsed, Rejected) and parsed.reason.startswith("bad_request: invalid requester")
    assert parsed.result is None and parsed.requester == ""


def test_bot_members_and_requesters_subject_token() -> None:
    assert isinstance(_parse(_delivery("create", {**CREATE, "name": "", "users": ["helper.bot"]})), Command)
    parsed = _parse(_delivery("create", {**CREATE, "requesterAccount": "helper.bot"}))
    assert isinstance(parsed, Rejected) and "requester" in parsed.reason
