"""`chatfed room` argument parsing and the command bodies it submits (no server: the submit step is captured)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from chatfed_cli import rooms
from chatfed_cli.main import app
from schemas.commands import ChannelRef, RoomCommand, encode_command

runner = CliRunner()
BASE = ["--site", "s1", "--requester", "alice"]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any], str]]:
    """What each invocation would submit: (site, subject suffix, body as on the wire, result account)."""
    calls: list[tuple[str, str, dict[str, Any], str]] = []

    def capture(site: str, op: str, body: RoomCommand, account: str, timeout: float) -> None:
        calls.append((site, op, json.loads(encode_command(body)), account))

    monkeypatch.setattr(rooms, "_run", capture)
    return calls


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["room", *args])


def test_role_submits_a_role_update(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    out = invoke("role", *BASE, "--room", "r1", "--account", "carol", "--role", "owner", "--requester-id", "u-alice")
    assert out.exit_code == 0, out.output
    [(site, op, body, account)] = sent
    assert (site, op, account) == ("s1", "member.role-update", "alice")
    assert body.pop("timestamp") > 0
    assert body == {"roomId": "r1", "account": "carol", "newRole": "owner", "requesterId": "u-alice", "requesterAccount": "alice"}


def test_role_demotes_with_member(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    assert invoke("role", *BASE, "--room-id", "r1", "-a", "carol", "--role", "member").exit_code == 0
    assert sent[0][2]["newRole"] == "member"


@pytest.mark.parametrize(
    "args",
    [
        ["--room", "r1", "--account", "carol", "--role", "admin"],
        ["--room", "r1", "--account", "carol", "--role", "Owner"],
        ["--room", "r1", "--account", "carol"],
        ["--room", "r1", "--role", "owner"],
        ["--account", "carol", "--role", "owner"],
    ],
    ids=["unknown-role", "role-case", "no-role", "no-account", "no-room"],
)
def test_role_with_bad_arguments_is_a_usage_error(sent: list[tuple[str, str, dict[str, Any], str]], args: list[str]) -> None:
    out = invoke("role", *BASE, *args)
    assert out.exit_code == 2
    assert "Usage" in out.output
    assert sent == []


def test_rename_submits_a_rename(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    out = invoke("rename", *BASE, "--room", "r1", "--name", "eng core")
    assert out.exit_code == 0, out.output
    [(site, op, body, account)] = sent
    assert (site, op, account) == ("s1", "rename", "alice")
    assert body.pop("timestamp") > 0
    assert body == {"roomId": "r1", "newName": "eng core", "requesterId": "", "requesterAccount": "alice"}


@pytest.mark.parametrize("args", [["--room", "r1", "--name", " "], ["--room", "r1"], ["--name", "x"]], ids=["blank", "no-name", "no-room"])
def test_rename_with_bad_arguments_is_a_usage_error(sent: list[tuple[str, str, dict[str, Any], str]], args: list[str]) -> None:
    out = invoke("rename", *BASE, *args)
    assert out.exit_code == 2
    assert "Usage" in out.output
    assert sent == []


def test_add_by_channel_defaults_to_the_commands_site(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    out = invoke("add", *BASE, "--room", "r1", "--channel", "src", "-c", "far@s2", "-u", "bob")
    assert out.exit_code == 0, out.output
    [(_, op, body, _)] = sent
    assert op == "member.add"
    assert body["channels"] == [{"roomId": "src", "siteId": "s1"}, {"roomId": "far", "siteId": "s2"}]
    assert (body["roomId"], body["users"], body["orgs"]) == ("r1", ["bob"], [])


def test_add_by_channel_alone_is_enough(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    assert invoke("add", *BASE, "--room-id", "r1", "--channel", "src").exit_code == 0
    assert sent[0][2]["channels"] == [{"roomId": "src", "siteId": "s1"}]


def test_create_by_channel_makes_a_channel(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    out = invoke("create", *BASE, "--name", "all hands", "--channel", "src@s2")
    assert out.exit_code == 0, out.output
    [(_, op, body, _)] = sent
    assert op == "create"
    assert body["channels"] == [{"roomId": "src", "siteId": "s2"}]
    assert len(body["roomId"]) == 17, "a channel gets a random id, not a dm's derived one"


def test_create_or_add_without_members_is_a_usage_error(sent: list[tuple[str, str, dict[str, Any], str]]) -> None:
    for args in (["create", *BASE, "--name", "x"], ["add", *BASE, "--room", "r1"]):
        out = invoke(*args)
        assert out.exit_code == 2 and "--channel" in out.output
    assert sent == []


@pytest.mark.parametrize("value", ["", "@s2", "src@", "src@S2", "a.b", "src@s 2"], ids=["empty", "no-room", "no-site", "upper-site", "dot", "space"])
def test_bad_channel_is_a_usage_error(sent: list[tuple[str, str, dict[str, Any], str]], value: str) -> None:
    for command in ("add", "create"):
        room = ["--room", "r1"] if command == "add" else ["--name", "x"]
        out = invoke(command, *BASE, *room, "--channel", value)
        assert out.exit_code == 2, (command, value, out.output)
        assert "Usage" in out.output
    assert sent == []


def test_channel_refs() -> None:
    assert rooms.channel_refs(["a", "b@s2", "c@d@s3"], "s1") == [
        ChannelRef(room_id="a", site_id="s1"),
        ChannelRef(room_id="b", site_id="s2"),
        ChannelRef(room_id="c@d", site_id="s3"),  # the last `@` separates the site
    ]
    with pytest.raises(typer.BadParameter):
        rooms.channel_refs(["x@"], "s1")
