"""`chatfed room role / rename` and `--channel` against a running room_worker: the result printed, the exit code, the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatfed_cli.rooms import app
from testkit.room_harness import RoomHarness, run, user, with_harness


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [user("alice", home), user("bob", home), user("carol", remote), user("dave", remote), user("erin", home, sectId="ux")]


def test_cli_role_rename_and_add_by_channel(servers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = CliRunner()

    async def invoke(*args: str) -> Any:
        return await asyncio.to_thread(cli.invoke, app, list(args))

    async def ok(*args: str) -> dict[str, Any]:
        out = await invoke(*args)
        assert out.exit_code == 0, out.output
        result: dict[str, Any] = json.loads(out.stdout)
        assert result["status"] == "ok", result
        return result

    async def scenario(h: RoomHarness) -> None:
        s1 = servers["sites"]["s1"]
        info = {**servers, "sites": {h.site: {**s1, "mongo_db": h.db.name}}}  # with the CA and the stores' logins
        (tmp_path / "info.json").write_text(json.dumps(info))
        monkeypatch.setenv("CHATFED_INFO", str(tmp_path / "info.json"))
        as_alice = ["--site", h.site, "-r", "alice"]

        src = (await ok("create", *as_alice, "--name", "src", "-u", "bob", "-u", "carol", "-o", "ux"))["roomId"]
        room = (await ok("create", *as_alice, "--name", "eng", "-u", "dave"))["roomId"]

        promoted = await ok("role", *as_alice, "--room", room, "--account", "dave", "--role", "owner")
        assert promoted["operation"] == "room.member.role_update"
        assert sorted(h.subs(room)["dave"]["roles"]) == ["member", "owner"]
        assert (await ok("role", *as_alice, "--room", room, "-a", "dave", "--role", "member"))["roomId"] == room
        assert h.subs(room)["dave"]["roles"] == ["member"]

        refused = await invoke("role", "--site", h.site, "-r", "dave", "--room", room, "-a", "dave", "--role", "owner")
        assert refused.exit_code == 1, refused.output
        assert (json.loads(refused.stdout)["code"]) == "forbidden"
        last = await invoke("role", *as_alice, "--room", room, "-a", "alice", "--role", "member")
        assert last.exit_code == 1 and json.loads(last.stdout)["code"] == "conflict", last.output

        assert (await ok("rename", *as_alice, "--room", room, "--name", "eng-core"))["operation"] == "room.rename"
        assert h.db.rooms.find_one({"_id": room})["name"] == "eng-core"
        assert {s["name"] for s in h.subs(room).values()} == {"eng-core"}

        await ok("add", *as_alice, "--room", room, "--channel", src)  # the channel's site defaults to --site
        assert sorted(h.subs(room)) == ["alice", "bob", "carol", "dave", "erin"]
        fresh = (await ok("create", *as_alice, "--name", "all", "--channel", f"{src}@{h.site}"))["roomId"]
        assert sorted(h.subs(fresh)) == ["alice", "bob", "carol", "erin"]

        bad = await invoke("role", *as_alice, "--room", room, "-a", "dave", "--role", "admin")
        assert bad.exit_code == 2 and "Usage" in bad.output

    run(with_harness(servers, _people, scenario))
