"""Decode failures, omitted fields, Go-identical bytes and documents of the wire types."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.commands import (
    AddMembers,
    CommandResult,
    CreateRoom,
    ErrorCode,
    RemoveMember,
    decode_add_members,
    decode_command_result,
    decode_create_room,
    decode_remove_member,
    encode_command,
)
from schemas.documents import (
    Room,
    Subscription,
    SubscriptionUser,
    User,
    UserRoomDoc,
    from_mongo,
    to_mongo,
)
from schemas.envelope import OutboxEvent, decode_envelope, encode_envelope, go_escape
from schemas.errors import DecodeError
from schemas.events import (
    MemberAddEvent,
    MemberRemoveEvent,
    RoomType,
    decode_member_added,
    decode_member_removed,
    decode_payload,
    decode_role_updated,
    decode_room_renamed,
    effective_room_type,
    encode_event,
)

ADD = {
    "type": "member_added",
    "roomId": "r1",
    "roomName": "eng",
    "accounts": ["alice"],
    "siteId": "s1",
    "joinedAt": 1,
    "timestamp": 2,
}
ENVELOPE = {"type": "member_added", "siteId": "s1", "destSiteId": "s2", "payload": "e30=", "timestamp": 5}
REMOVE = {"roomId": "r1", "requester": "alice", "timestamp": 9}


def _json(obj: object, **changes: object) -> bytes:
    """JSON of `obj` (a dict) with keys changed, or dropped when the value is `...`."""
    assert isinstance(obj, dict)
    merged = {**obj, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not ...}).encode()


MALFORMED: list[tuple[str, Callable[[bytes], object], bytes, str]] = [
    ("bad_json", decode_envelope, b'{"type":', "envelope: "),
    ("not_an_object", decode_envelope, b"[]", "Expected `object`"),
    ("invalid_utf8", decode_envelope, b'{"type":"\xff"}', "envelope: "),
    ("bad_base64", decode_envelope, _json(ENVELOPE, payload="e30"), "`$.payload`"),
    ("missing_site_id", decode_envelope, _json(ENVELOPE, siteId=...), "missing required field `siteId`"),
    ("timestamp_zero", decode_envelope, _json(ENVELOPE, timestamp=0), "`$.timestamp`"),
    ("timestamp_string", decode_envelope, _json(ENVELOPE, timestamp="5"), "Expected `int`"),
    ("joined_at_float", decode_member_added, _json(ADD, joinedAt=1.5), "`$.joinedAt`"),
    ("missing_room_name", decode_member_added, _json(ADD, roomName=...), "`roomName`"),
    ("empty_room_id", decode_member_added, _json(ADD, roomId=""), "`$.roomId`"),
    ("empty_account", decode_member_added, _json(ADD, accounts=["alice", ""]), "`$.accounts[1]`"),
    ("accounts_null", decode_member_added, _json(ADD, accounts=None), "`$.accounts`"),
    (
        "remove_empty_account",
        decode_member_removed,
        b'{"type":"member_removed","roomId":"r","accounts":[""],"siteId":"s1","timestamp":1}',
        "member_removed: ",
    ),
    (
        "role_without_account",
        decode_role_updated,
        b'{"userId":"u","subscription":{"roomId":"r","u":{},'
        b'"roles":["owner"]},"action":"role_updated","timestamp":1}',
        "`$.subscription.u`",
    ),
    ("rename_without_name", decode_room_renamed, b'{"roomId":"r","timestamp":1}', "`newName`"),
    ("remove_both", decode_remove_member, _json(REMOVE, account="bob", orgId="o1"), "exactly one"),
    ("remove_neither", decode_remove_member, _json(REMOVE), "exactly one"),
    ("create_without_room_id", decode_create_room, b'{"requesterAccount":"a","timestamp":1}', "`roomId`"),
    (
        "create_timestamp_zero",
        decode_create_room,
        b'{"roomId":"r","requesterAccount":"a","timestamp":0}',
        "`$.timestamp`",
    ),
    (
        "add_bad_history_mode",
        decode_add_members,
        b'{"roomId":"r","requesterAccount":"a","timestamp":1,"history":{"mode":"some"}}',
        "`$.history.mode`",
    ),
    (
        "result_missing_status",
        decode_command_result,
        b'{"requestId":"q","operation":"o","timestamp":1}',
        "`status`",
    ),
]


@pytest.mark.parametrize(
    ("decode", "data", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_raises_decode_error(
    decode: Callable[[bytes], object], data: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decode_error_text_names_what_and_field() -> None:
    with pytest.raises(DecodeError, match=r"^envelope: Object missing required field `siteId`$"):
        decode_envelope(_json(ENVELOPE, siteId=...))


def test_html_characters_are_escaped_like_go() -> None:
    event = MemberAddEvent(
        type="member_added",
        room_id="r1",
        room_name="R&D <core> \u2028",
        accounts=["a"],
        site_id="s1",
        joined_at=1,
        timestamp=2,
    )
    encoded = encode_event(event)
    assert encoded == (
        b'{"type":"member_added","roomId":"r1","roomName":"R\\u0026D \\u003ccore\\u003e \\u2028",'
        b'"accounts":["a"],"siteId":"s1","joinedAt":1,"timestamp":2}'
    )
    assert decode_member_added(encoded) == event
    envelope = OutboxEvent(type="a<b", site_id="s1", dest_site_id="s1", payload=encoded, timestamp=3)
    assert b'"type":"a\\u003cb"' in encode_envelope(envelope)
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_go_escape_leaves_control_characters_as_msgspec_writes_them() -> None:
    # Go 1.22+ writes \b, \f, \n, \r, \t and lowercase \u00XX, as msgspec does
    assert go_escape(msgspec.json.encode("\b\f\x1a\x7f")) == b'"\\b\\f\\u001a\x7f"'


def test_unknown_keys_are_ignored() -> None:
    data = _json(ADD, extra={"nested": [1, 2]}, roomKind="x")
    assert decode_member_added(data) == decode_member_added(_json(ADD))
    assert decode_envelope(_json(ENVELOPE, extra=1)).dest_site_id == "s2"


def test_empty_room_type_and_unset_history_are_omitted() -> None:
    event = decode_member_added(_json(ADD))
    assert event.room_type == ""
    assert event.history_shared_since is msgspec.UNSET
    assert effective_room_type(event) == RoomType.CHANNEL
    encoded = encode_event(event)
    assert b"roomType" not in encoded
    assert b"historySharedSince" not in encoded
    assert b"requesterAccount" not in encoded
    assert b'"roomName":""' in encode_event(msgspec.structs.replace(event, room_name=""))


def test_non_positive_history_shared_since_reads_as_absent() -> None:
    assert decode_member_added(_json(ADD, historySharedSince=0)).history_shared_since is msgspec.UNSET
    built = MemberAddEvent(
        type="member_added",
        room_id="r",
        room_name="",
        accounts=["a"],
        site_id="s1",
        joined_at=1,
        history_shared_since=-5,
        timestamp=1,
    )
    assert b"historySharedSince" not in encode_event(built)


def test_org_id_is_omitted_unless_set() -> None:
    event = MemberRemoveEvent(type="member_removed", room_id="r", accounts=["a"], site_id="s1", timestamp=1)
    assert (
        encode_event(event)
        == b'{"type":"member_removed","roomId":"r","accounts":["a"],"siteId":"s1","timestamp":1}'
    )


def test_decode_payload_dispatches_on_envelope_type() -> None:
    payload = _json(ADD)
    envelope = OutboxEvent(type="member_added", site_id="s1", dest_site_id="s1", payload=payload, timestamp=1)
    assert decode_payload(envelope) == decode_member_added(payload)
    unknown = msgspec.structs.replace(envelope, type="subscription_read")
    assert decode_payload(unknown) is None
    with pytest.raises(DecodeError, match=r"^room_renamed: "):
        decode_payload(msgspec.structs.replace(envelope, type="room_renamed"))


def test_role_updated_reads_nested_subscription() -> None:
    event = decode_role_updated(
        b'{"userId":"u1","subscription":{"id":"x","roomId":"r1","u":{"id":"u1","account":"bob",'
        b'"isBot":false},"roles":["owner"],"name":"eng"},"action":"role_updated","timestamp":7}'
    )
    assert (event.subscription.room_id, event.subscription.u.account, event.subscription.roles) == (
        "r1",
        "bob",
        ["owner"],
    )


def test_remove_member_construction_checks_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RemoveMember(room_id="r", requester="a", timestamp=1)
    by_org = RemoveMember(room_id="r", requester="a", org_id="o1", timestamp=1)
    assert encode_command(by_org) == b'{"roomId":"r","requester":"a","orgId":"o1","timestamp":1}'
    assert decode_remove_member(encode_command(by_org)) == by_org


def test_commands_default_lists_and_history() -> None:
    add = decode_add_members(b'{"roomId":"r","requesterAccount":"a","timestamp":1}')
    assert (add.users, add.orgs, add.channels, add.history.mode) == ([], [], [], "all")
    create = decode_create_room(
        b'{"name":"","users":["bob"],"channels":[{"roomId":"c1","siteId":"s2"}],"roomId":"r",'
        b'"requesterId":"u1","requesterAccount":"a","timestamp":1}'
    )
    assert create.channels[0].site_id == "s2"
    assert decode_create_room(encode_command(create)) == create
    assert isinstance(add, AddMembers) and isinstance(create, CreateRoom)


def test_command_result_omits_empty_optionals() -> None:
    ok = CommandResult(request_id="q", operation="room.create", status="ok", room_id="r", timestamp=1)
    assert (
        encode_command(ok)
        == b'{"requestId":"q","operation":"room.create","status":"ok","roomId":"r","timestamp":1}'
    )
    failed = CommandResult(
        request_id="q",
        operation="room.create",
        status="error",
        error="nope",
        code=ErrorCode.CONFLICT,
        timestamp=1,
    )
    assert decode_command_result(encode_command(failed)).code == "conflict"


def test_mongo_documents_round_trip_with_wire_keys() -> None:
    sub = Subscription(
        id="0195",
        u=SubscriptionUser(id="u1", account="carol"),
        room_id="r",
        site_id="s1",
        room_type="dm",
        name="alice",
        roles=None,
        joined_at=10,
    )
    raw = to_mongo(sub)
    assert raw == {
        "_id": "0195",
        "u": {"_id": "u1", "account": "carol", "isBot": False},
        "roomId": "r",
        "siteId": "s1",
        "roomType": "dm",
        "name": "alice",
        "roles": None,
        "isSubscribed": False,
        "joinedAt": 10,
    }
    assert from_mongo(Subscription, {**raw, "lastSeenAt": object()}) == sub
    room = Room(id="r", name="", type="dm", site_id="s1", created_at=1, updated_at=1)
    assert from_mongo(Room, to_mongo(room)) == room
    user = from_mongo(User, {"_id": "u1", "account": "a", "siteId": "s2", "sectId": "o1", "engName": "A"})
    assert to_mongo(user) == {"_id": "u1", "account": "a", "siteId": "s2", "sectId": "o1", "engName": "A"}
    assert to_mongo(UserRoomDoc(user_account="a", created_at=1, updated_at=2))["restrictedRooms"] == {}


def test_bad_mongo_document_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"^Room: "):
        from_mongo(Room, {"_id": "r"})


_ACCOUNTS = st.lists(st.text(min_size=1), max_size=5)
_MS = st.integers(min_value=1, max_value=2**53)


@given(
    room_id=st.text(min_size=1),
    room_name=st.text(),
    room_type=st.sampled_from(["", *RoomType]),
    accounts=_ACCOUNTS,
    requester=st.text(),
    joined_at=_MS,
    history=st.one_of(st.just(msgspec.UNSET), _MS),
    timestamp=_MS,
)
def test_member_add_event_round_trips_through_envelope(
    room_id: str,
    room_name: str,
    room_type: str,
    accounts: list[str],
    requester: str,
    joined_at: int,
    history: int | msgspec.UnsetType,
    timestamp: int,
) -> None:
    event = MemberAddEvent(
        type="member_added",
        room_id=room_id,
        room_name=room_name,
        room_type=room_type,
        accounts=accounts,
        site_id="s1",
        requester_account=requester,
        joined_at=joined_at,
        history_shared_since=history,
        timestamp=timestamp,
    )
    payload = encode_event(event)
    assert not {b"<", b">", b"&"} & {bytes([c]) for c in payload}
    envelope = OutboxEvent(
        type="member_added", site_id="s1", dest_site_id="s2", payload=payload, timestamp=timestamp
    )
    data = encode_envelope(envelope)
    decoded = decode_envelope(data)
    assert base64.b64decode(json.loads(data)["payload"]) == payload
    assert decode_member_added(decoded.payload) == event
    assert json.loads(payload) == msgspec.to_builtins(event)
