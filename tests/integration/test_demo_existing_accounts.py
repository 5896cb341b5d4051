"""`chatfed demo` (the main job's scenario) on a directory that already holds its accounts under other ids.

The demo runs on two fresh test sites whose streams live on s1's server (sourced without the external API),
with their own databases and indexes, and the same six flows `chatfed flows up` starts; it never touches the
shared sites s1 / s2 nor flows it did not start.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from chatfed_cli import flows as flow_procs
from chatfed_cli.topology import topology_of
from connectors.mongo import ensure_indexes
from dataflows.room_worker.plans import direct_room_id
from schemas import names
from testkit.clients import es_client, info_of_test_site, mongo_client
from testkit.search_site import cleanup_indexes
from testkit.support import REPO, bootstrap_local_sites, connect_site, unique_site

CHATFED = Path(sys.executable).parent / "chatfed"


def _chatfed(info: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`chatfed ARGS` as `./run.sh` runs it, against the topology in `info` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFED_")}
    env |= {"CHATFED_INFO": str(info), "COLUMNS": "200"}
    return subprocess.run([str(CHATFED), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


class DemoSites:
    """Two test sites (home, remote) on s1's NATS server, their databases, and an info file naming only them."""

    def __init__(self, servers: dict[str, Any], tmp: Path) -> None:
        self.servers = servers
        self.home, self.remote = unique_site("demo"), unique_site("demo")
        self.mongo: MongoClient[dict[str, Any]] = mongo_client(servers, retryWrites=False)
        self.dbs = {site: self.mongo[f"chat_{site}"] for site in (self.home, self.remote)}
        self.raw = {**servers, "sites": {site: info_of_test_site(servers, site) for site in (self.home, self.remote)}}
        self.info = tmp / "info.json"
        self.info.write_text(json.dumps(self.raw))
        self.started: list[flow_procs.FlowProc] = []
        asyncio.run(self._streams(create=True))
        for db in self.dbs.values():
            ensure_indexes(db)  # as the flows make them: users.account is unique

    async def _streams(self, *, create: bool) -> None:
        client = await connect_site(self.servers, "s1")
        try:
            if create:
                await bootstrap_local_sites(client, [self.home, self.remote])
                return
            js = client.jetstream()
            for site in (self.home, self.remote):
                for stream in (names.rooms_stream(site), names.outbox_stream(site), names.inbox_stream(site), names.dlq_stream(site)):
                    try:
                        await js.delete_stream(stream)
                    except Exception:  # noqa: BLE001, S110 - cleanup of what may not exist
                        pass
        finally:
            await client.close()

    def flows_up(self, timeout: float = 120) -> None:
        """What `chatfed flows up` does after its (federated) bootstrap: start the six flows, wait until each pulls."""
        self.started = flow_procs.start(topology_of(self.raw))
        deadline = time.monotonic() + timeout
        while True:
            status = _chatfed(self.info, "status", "--json", timeout=60)
            assert status.returncode == 0, status.stderr
            sites = json.loads(status.stdout)
            dead = [f"{st['site']}/{f['flow']}" for st in sites for f in st["flows"] if not f["processes"]]
            assert not dead, f"flow(s) exited: {dead}; see {flow_procs.LOG_DIR}"
            idle = [f"{st['site']}/{d['durable']}" for st in sites for d in st["durables"] if d["waiting"] == 0]
            if not idle:
                return
            assert time.monotonic() < deadline, f"not consuming after {timeout}s: {idle}"
            time.sleep(0.5)  # poll interval: until every durable has a pull waiting

    def close(self) -> None:
        flow_procs.terminate(self.started)  # only the flows this test started
        asyncio.run(self._streams(create=False))
        es = es_client(self.servers)
        for site in (self.home, self.remote):
            cleanup_indexes(es, site)
            self.mongo.drop_database(f"chat_{site}")
        es.close()
        self.mongo.close()


@pytest.fixture
def demo_sites(servers: dict[str, Any], tmp_path: Path) -> Iterator[DemoSites]:
    sites = DemoSites(servers, tmp_path)
    try:
        yield sites
    finally:
        sites.close()


def test_demo_adopts_accounts_that_exist_under_other_ids(demo_sites: DemoSites) -> None:
    home, remote = demo_sites.home, demo_sites.remote
    for db in demo_sites.dbs.values():  # both sites' directories already know the bot and carol, under their own ids
        db.users.insert_many([
            {"_id": "legacy-helper", "account": "helper.bot", "siteId": home, "name": "Helper (legacy)"},
            {"_id": "legacy-carol", "account": "carol", "siteId": remote, "deptId": "old-dept"},
        ])
    demo_sites.dbs[home].users.insert_one({"_id": "u-bob", "account": "robert", "siteId": home})  # the id the demo would give bob
    demo_sites.flows_up()

    demo = _chatfed(demo_sites.info, "demo", "--timeout", "60")
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output and "FAILED" not in output, output

    home_db, remote_db = demo_sites.dbs[home], demo_sites.dbs[remote]
    for db in (home_db, remote_db):  # adopted, not duplicated
        assert [u["_id"] for u in db.users.find({"account": "helper.bot"})] == ["legacy-helper"]
        assert [u["_id"] for u in db.users.find({"account": "carol"})] == ["legacy-carol"]
    assert home_db.users.find_one({"_id": "u-bob"}, {"account": 1}) == {"_id": "u-bob", "account": "robert"}
    bob_id = home_db.users.find_one({"account": "bob"})["_id"]
    assert bob_id != "u-bob"
    assert remote_db.users.find_one({"account": "bob"})["_id"] == bob_id  # the remote site got the home's id
    alice_id = home_db.users.find_one({"account": "alice"})["_id"]

    # the dm and botDM were created under the ids the directory holds, and reached the remote site
    bot_dm, dm = direct_room_id(alice_id, "legacy-helper"), direct_room_id(alice_id, "legacy-carol")
    assert {s["u"]["account"]: s["u"]["_id"] for s in home_db.subscriptions.find({"roomId": bot_dm})} == {"alice": alice_id, "helper.bot": "legacy-helper"}
    assert {s["u"]["account"] for s in home_db.subscriptions.find({"roomId": dm})} == {"alice", "carol"}
    assert remote_db.subscriptions.find_one({"roomId": dm, "u.account": "carol"}) is not None
    # carol's stale department is the demo's again, so org expansion plays as scripted
    assert home_db.users.find_one({"account": "carol"})["deptId"] == "search"


def test_demo_without_two_sites_or_a_reachable_store_says_so_in_one_line(servers: dict[str, Any], tmp_path: Path) -> None:
    s1 = servers["sites"]["s1"]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({**servers, "sites": {"s1": s1}}))
    lonely = _chatfed(one, "demo", timeout=60)
    assert lonely.returncode == 1
    assert lonely.stdout.strip() == "demo failed: the demo needs two sites, the topology has 1: s1", lonely.stdout + lonely.stderr
    assert "Traceback" not in lonely.stderr

    nowhere = tmp_path / "nowhere.json"  # a MongoDB that does not answer: seeding fails after the client's 5 s selection
    sites = {site: {**s1, "mongo_db": f"chat_{unique_site('none')}"} for site in ("a", "b")}
    nowhere.write_text(json.dumps({**servers, "sites": sites, "mongo_uri": "mongodb://127.0.0.1:9/"}))
    down = _chatfed(nowhere, "demo", timeout=60)
    assert down.returncode == 1
    [line] = down.stdout.strip().splitlines()
    assert line.startswith("demo failed: seeding the demo's users failed: ServerSelectionTimeoutError"), line
    assert "Traceback" not in down.stderr, down.stderr
