"""The operator CLI against the real servers: status, search / user queries, dead-letter replay."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

from chatfed_cli.main import app
from schemas import names, subjects
from schemas.commands import CreateRoom, encode_command
from schemas.events import MemberAddEvent
from schemas.streams import ACK_WAIT_S, MAX_DELIVER
from testkit.clients import info_of_test_site, mongo_client
from testkit.mirror_site import add, mirror_site
from testkit.support import (
    FlowProcess,
    bootstrap_local_sites,
    connect_site,
    envelope_bytes,
    flow_env,
    unique_site,
    wait_drained,
    wait_for,
)

runner = CliRunner()


class CliSite:
    """A fresh test site on the s1 server and an info file that names only it, for `CHATFED_INFO`."""

    def __init__(self, servers: dict[str, Any], tmp: Path) -> None:
        self.servers = servers
        self.site, self.other = unique_site(), unique_site()
        self.mongo: MongoClient[dict[str, Any]] = mongo_client(servers)
        self.db = self.mongo[f"chat_{self.site}"]
        self.flows: list[FlowProcess] = []
        info = {**servers, "sites": {self.site: info_of_test_site(servers, self.site)}}
        self.info = tmp / "info.json"
        self.info.write_text(json.dumps(info))
        self.run(self._bootstrap())

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    async def _bootstrap(self) -> None:
        client = await connect_site(self.servers, "s1")
        try:
            await bootstrap_local_sites(client, [self.site, self.other])
        finally:
            await client.close()

    async def publish(self, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
        client = await connect_site(self.servers, "s1")
        try:
            for subject, data, headers in items:
                await client.jetstream().publish(subject, data, headers=headers)
        finally:
            await client.close()

    async def drained(self, stream: str, durable: str) -> None:
        client = await connect_site(self.servers, "s1")
        try:
            await wait_drained(client.jetstream(), stream, durable, timeout=60)
        finally:
            await client.close()

    def flow(self, module: str) -> FlowProcess:
        flow = FlowProcess(module, flow_env(self.servers, self.site)).start()
        self.flows.append(flow)
        return flow

    def cli(self, *args: str) -> Any:
        result = runner.invoke(app, list(args), env={"CHATFED_INFO": str(self.info)})
        return result

    def close(self) -> None:
        for flow in self.flows:
            flow.stop()
        self.mongo.drop_database(f"chat_{self.site}")
        self.mongo.close()


@pytest.fixture
def cli_site(servers: dict[str, Any], tmp_path: Path) -> Iterator[CliSite]:
    site = CliSite(servers, tmp_path)
    yield site
    site.close()


def _durable(status: list[dict[str, Any]], durable: str) -> dict[str, Any]:
    [site] = status
    return next(d for d in site["durables"] if d["durable"] == durable)


def test_status_shows_the_backlog_of_a_stopped_flow_then_zero_after_catch_up(cli_site: CliSite) -> None:
    site = cli_site.site
    cli_site.db.users.insert_many([{"_id": f"u-{a}", "account": a, "siteId": site} for a in ("alice", "bob")])
    now = int(time.time() * 1000)
    commands = [
        (
            subjects.rooms_command(site, "create"),
            encode_command(CreateRoom(name=f"room-{n}", users=["bob"], room_id=f"r-{n}", requester_id="u-alice", requester_account="alice", timestamp=now + n)),
            {"X-Request-ID": str(uuid.uuid4())},
        )
        for n in range(5)
    ]
    cli_site.run(cli_site.publish(commands))

    stopped = cli_site.cli("status", "--json")
    assert stopped.exit_code == 0, stopped.output
    idle = _durable(json.loads(stopped.output), names.ROOM_WORKER_DURABLE)
    assert (idle["pending"], idle["last_delivered_s"]) == (5, None)

    cli_site.flow("dataflows.room_worker")
    cli_site.run(cli_site.drained(names.rooms_stream(site), names.ROOM_WORKER_DURABLE))
    caught_up = json.loads(cli_site.cli("status", "--json").output)
    room_worker = _durable(caught_up, names.ROOM_WORKER_DURABLE)
    assert (room_worker["pending"], room_worker["ack_pending"], room_worker["redelivered"]) == (0, 0, 0)
    assert room_worker["last_delivered_s"] is not None and room_worker["last_acked_s"] is not None
    assert cli_site.db.rooms.count_documents({}) == 5


def test_search_and_user_rooms_answer_from_the_views(cli_site: CliSite) -> None:
    site = cli_site.site
    now = int(time.time() * 1000)
    event = MemberAddEvent(
        type="member_added", room_id="r-eng", room_name="eng-platform", room_type="channel", accounts=["alice", "bob"],
        site_id=site, requester_account="alice", joined_at=now, timestamp=now,
    )
    data = envelope_bytes(event, event_type="member_added", site=site, dest=site, timestamp=now)
    cli_site.flow("dataflows.search_sync")
    cli_site.run(cli_site.publish([(subjects.inbox_local(site, "member_added"), data, {"Nats-Msg-Id": "e1"})]))
    cli_site.run(cli_site.drained(names.inbox_stream(site), names.SEARCH_SYNC_DURABLE))

    def search() -> Any:
        return cli_site.cli("search", "rooms", "eng pl", "--site", site, "--user", "alice")

    # searches are near-real-time (refresh interval); the user-room get is not
    cli_site.run(wait_for(lambda: "r-eng" in search().output, timeout=30, interval=0.2, what="the search to see the room"))
    found = search()
    assert found.exit_code == 0, found.output
    assert "r-eng\tchannel\teng-platform" in found.output
    assert "no match" in cli_site.cli("search", "rooms", "design", "--site", site, "--user", "alice").output

    rooms = cli_site.cli("user", "rooms", "--site", site, "--user", "bob")
    assert rooms.exit_code == 0, rooms.output
    assert json.loads(rooms.output) == {"rooms": ["r-eng"], "restrictedRooms": {}}
    assert cli_site.cli("user", "rooms", "--site", site, "--user", "nobody").exit_code == 1


def test_bad_arguments_get_a_usage_message(cli_site: CliSite) -> None:
    unknown = cli_site.cli("dlq", "list", "--site", "nowhere")
    assert unknown.exit_code == 2
    assert "unknown site" in unknown.output
    assert cli_site.cli("dlq", "replay").exit_code == 2  # --site is required


def test_dlq_replay_of_an_unknown_account_succeeds_once_the_user_exists(servers: dict[str, Any], tmp_path: Path) -> None:
    with mirror_site(servers) as s, s.flow(CHATFED_MAX_DELIVER="2", CHATFED_BACKOFF_BASE_MS="50", CHATFED_BACKOFF_MAX_MS="100"):
        info = tmp_path / "info.json"
        info.write_text(json.dumps({**servers, "sites": {s.site: {**servers["sites"]["s1"], "mongo_db": s.db.name}}}))
        env = {"CHATFED_INFO": str(info)}
        s.users(["alice"])
        s.publish([add("r1", ["alice", "ghost"], 10)])
        s.dead_letters(1)
        s.drained()
        assert s.present() == {("r1", "alice")}

        listed = runner.invoke(app, ["dlq", "list", "--site", s.site, "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        [letter] = json.loads(listed.output)
        assert letter["reason"] == "unknown account 'ghost' on this site" and letter["flow"] == "inbox_mirror"

        s.users(["ghost"])  # the directory caught up
        replayed = runner.invoke(app, ["dlq", "replay", "--site", s.site], env=env)
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 1 dead letter(s)" in replayed.output
        s.run(wait_for(lambda: ("r1", "ghost") in s.present(), timeout=30, what="ghost's subscription after the replay"))
        s.drained()
        assert s.present() == {("r1", "alice"), ("r1", "ghost")}
        assert json.loads(runner.invoke(app, ["dlq", "list", "--site", s.site, "--json"], env=env).output) == []


def test_bootstrap_is_idempotent_and_flows_up_down_manage_the_processes(cli_site: CliSite) -> None:
    from chatfed_cli import flows as flow_procs

    for _ in range(2):  # a second run changes nothing and still verifies
        boot = cli_site.cli("bootstrap")
        assert boot.exit_code == 0, boot.output
        assert f"{cli_site.site}: streams, sources and consumers ready" in boot.output

    up = cli_site.cli("flows", "up", "--timeout", "90")
    try:
        assert up.exit_code == 0, up.output
        assert "every flow is consuming" in up.output
        mine = {p.flow for p in flow_procs.running() if p.site == cli_site.site}
        assert mine == set(flow_procs.FLOWS)
        listed = cli_site.cli("flows", "status")
        assert all(f"{flow}-{cli_site.site}-0" in listed.output for flow in flow_procs.FLOWS)
        status = json.loads(cli_site.cli("status", "--json").output)
        assert all(f["processes"] for f in status[0]["flows"])
    finally:
        down = cli_site.cli("flows", "down")
    assert down.exit_code == 0, down.output
    assert not [p for p in flow_procs.running() if p.site == cli_site.site]


def test_bootstrap_takes_max_deliver_and_ack_wait_from_the_flows_settings_updating_existing_durables(cli_site: CliSite) -> None:
    async def contracts() -> dict[str, tuple[int, float]]:
        client = await connect_site(cli_site.servers, "s1")
        try:
            js = client.jetstream()
            found = {}
            for stream, durable in (
                (names.rooms_stream(cli_site.site), names.ROOM_WORKER_DURABLE),
                (names.inbox_stream(cli_site.site), names.INBOX_WORKER_DURABLE),
                (names.inbox_stream(cli_site.site), names.SEARCH_SYNC_DURABLE),
            ):
                config = (await js.consumer_info(stream, durable)).config
                found[durable] = (config.max_deliver, config.ack_wait)
            return found
        finally:
            await client.close()

    # CliSite bootstrapped the durables with the defaults; a bootstrap with other settings updates them in place
    assert set(cli_site.run(contracts()).values()) == {(MAX_DELIVER, float(ACK_WAIT_S))}
    env = {"CHATFED_INFO": str(cli_site.info), "CHATFED_MAX_DELIVER": "15", "CHATFED_ACK_WAIT_S": "45"}
    boot = runner.invoke(app, ["bootstrap"], env=env)
    assert boot.exit_code == 0, boot.output
    assert set(cli_site.run(contracts()).values()) == {(15, 45.0)}
    assert "max_deliver 15, ack_wait 45 s" in boot.output

    bad = runner.invoke(app, ["bootstrap"], env={**env, "CHATFED_MAX_DELIVER": "many"})
    assert bad.exit_code == 2 and "CHATFED_MAX_DELIVER" in bad.output
