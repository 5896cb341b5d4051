"""`chatfed room` against a running room_worker: prints the result, exits non-zero on an error or a bad command line."""

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
    return [user("alice", home), user("bob", home), user("carol", remote)]


def test_cli_creates_a_room_and_reports_errors(servers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = CliRunner()

    async def invoke(*args: str) -> Any:
        return await asyncio.to_thread(cli.invoke, app, list(args))

    async def scenario(h: RoomHarness) -> None:
        s1 = servers["sites"]["s1"]
        info = {**servers, "sites": {h.site: {**s1, "mongo_db": h.db.name}}}
        (tmp_path / "info.json").write_text(json.dumps(info))
        monkeypatch.setenv("CHATFED_INFO", str(tmp_path / "info.json"))

        ok = await invoke("create", "--site", h.site, "-r", "alice", "--name", "eng", "-u", "bob", "-u", "carol")
        assert ok.exit_code == 0, ok.output
        result = json.loads(ok.stdout)
        assert (result["status"], result["operation"]) == ("ok", "room.create")
        assert sorted(h.subs(result["roomId"])) == ["alice", "bob", "carol"]

        dm = await invoke("create", "--site", h.site, "-r", "alice", "-u", "bob")
        assert dm.exit_code == 0, dm.output
        assert json.loads(dm.stdout)["roomId"] == "u-aliceu-bob"

        added = await invoke("add", "--site", h.site, "-r", "alice", "--room-id", "u-aliceu-bob", "-u", "carol")
        assert added.exit_code == 1
        failed = json.loads(added.stdout)
        assert (failed["status"], failed["code"]) == ("error", "bad_request")

        removed = await invoke("remove", "--site", h.site, "-r", "alice", "--room-id", result["roomId"], "-a", "bob")
        assert removed.exit_code == 0, removed.output
        assert sorted(h.subs(result["roomId"])) == ["alice", "carol"]

        both = await invoke("remove", "--site", h.site, "-r", "alice", "--room-id", "x", "-a", "bob", "-o", "org")
        assert both.exit_code == 2 and "exactly one" in both.output
        unknown = await invoke("create", "--site", "nowhere", "-r", "alice", "-u", "bob", "--name", "n")
        assert unknown.exit_code == 2

    run(with_harness(servers, _people, scenario))


def test_cli_times_out_without_a_worker(servers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(h: RoomHarness) -> None:
        assert h.flow is not None
        h.flow.stop()
        info = {**servers, "sites": {h.site: servers["sites"]["s1"]}}
        (tmp_path / "info.json").write_text(json.dumps(info))
        monkeypatch.setenv("CHATFED_INFO", str(tmp_path / "info.json"))
        args = ["create", "--site", h.site, "-r", "alice", "--name", "eng", "-u", "bob", "--timeout", "0.5"]
        out = await asyncio.to_thread(CliRunner().invoke, app, args)
        assert out.exit_code == 3 and "no result" in out.output

    run(with_harness(servers, _people, scenario))
