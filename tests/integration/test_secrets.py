"""No password, token or private key reaches a log line or the CLI's output (issues 7 and 14): flows and the CLI run with
the real NATS, MongoDB and Elasticsearch credentials (some in URLs), unused ones set on top, and with wrong ones.

The secrets looked for: every password `services info` hands out, the fake ones set here, and the base64 body of every
private key of the servers' PKI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connectors.settings import load_tuning
from schemas import names, subjects
from schemas.events import MemberAddEvent
from testkit.mirror_site import MirrorSite, add, mirror_site
from testkit.support import (
    LOGS,
    REPO,
    FlowProcess,
    envelope_bytes,
    flow_env,
    retune,
    wait_drained,
    wait_for,
)

ES_PASSWORD = f"s3cret-es-{uuid.uuid4().hex[:8]}"
ES_API_KEY = f"s3cret-apikey-{uuid.uuid4().hex[:8]}"


def with_userinfo(url: str, user: str, password: str, query: str = "") -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}", query=query or parts.query))


def nats_passwords(servers: Mapping[str, Any]) -> list[str]:
    return [v for desc in servers["sites"].values() for k, v in desc.items() if k.endswith("password") and v]


def all_secrets(servers: Mapping[str, Any]) -> list[str]:
    """Every password of `services info` and the first line of every private key's base64 body."""
    passwords = [*nats_passwords(servers), *es_passwords(servers), servers["mongo_password"]]
    keys = [line for path in Path(servers["tls_ca"]).parent.glob("*.key") for line in path.read_text().splitlines()[1:2]]
    assert len(keys) >= 5, keys
    return [*passwords, *keys]


def es_passwords(servers: Mapping[str, Any]) -> list[str]:
    """Elasticsearch's operator and every site's search_sync user."""
    return [servers["es_password"], *(d["es_service_password"] for d in servers["sites"].values() if d.get("es_service_password"))]


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    assert secrets and all(secrets)
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{where} contains {len(leaked)} secret(s)"


async def _acked_through(s: MirrorSite, durable: str, seq: int) -> bool:
    info = await s.js.consumer_info(names.inbox_stream(s.site), durable)
    return bool(info.ack_floor.stream_seq >= seq)


def log_of(flow: FlowProcess) -> str:
    return "".join((LOGS / f"{flow.name}-{i}.log").read_text(errors="replace") for i in range(flow.processes))


def _publish_mirror_work(s: MirrorSite) -> None:
    """One event applied, one dead-lettered (its reason is logged)."""
    s.users(["alice"])
    s.publish([add("r1", ["alice"], int(time.time() * 1000))])
    forged = s.envelope(add("r2", ["alice"], int(time.time() * 1000)), origin="s-forged")
    s.publish_raw(subjects.outbox(origin=s.other, dest=s.site, event_type="member_added"), forged)


def test_flow_logs_carry_no_password(servers: dict[str, Any]) -> None:
    secrets = [*all_secrets(servers), ES_PASSWORD, ES_API_KEY]
    # the store's real user in the URI (inbox_mirror) or in CHATFED_MONGO_USER / _PASSWORD (room_worker): both must work
    mongo_in_uri = with_userinfo(servers["mongo_uri"], servers["mongo_user"], servers["mongo_password"])
    es_in_url = with_userinfo(servers["es_url"], "elastic", ES_PASSWORD)  # unused by these two flows: still not logged
    with mirror_site(servers) as s:
        nats_in_url = with_userinfo(servers["sites"]["s1"]["nats_url"], servers["sites"]["s1"]["nats_user"], servers["sites"]["s1"]["nats_password"])
        mirror_env = flow_env(
            servers, s.site, CHATFED_MONGO_URI=mongo_in_uri, CHATFED_MONGO_USER="", CHATFED_MONGO_PASSWORD="", CHATFED_ES_URL=es_in_url, CHATFED_MAX_DELIVER="2"
        )
        room_env = flow_env(
            servers,
            s.site,
            CHATFED_ES_URL=servers["es_url"],
            CHATFED_ES_USER="elastic",
            CHATFED_ES_PASSWORD=ES_PASSWORD,
            CHATFED_ES_API_KEY=ES_API_KEY,
            CHATFED_NATS_URL=nats_in_url,  # credentials in the URL instead of CHATFED_NATS_USER/PASSWORD
            CHATFED_NATS_USER="",
            CHATFED_NATS_PASSWORD="",
        )
        assert mirror_env["CHATFED_NATS_PASSWORD"] in secrets and room_env["CHATFED_MONGO_PASSWORD"] in secrets
        s.run(retune(s.js, names.inbox_stream(s.site), names.INBOX_WORKER_DURABLE, load_tuning(mirror_env)))
        mirror = FlowProcess("dataflows.inbox_mirror", mirror_env)
        rooms = FlowProcess("dataflows.room_worker", room_env)
        with mirror, rooms:
            _publish_mirror_work(s)
            body = {"name": "n", "users": ["alice"], "roomId": "r-new", "requesterAccount": "alice", "timestamp": int(time.time() * 1000)}
            s.run(s.js.publish(subjects.rooms_command(s.site, "create"), json.dumps(body).encode(), headers={"X-Request-ID": str(uuid.uuid4())}))
            s.run(s.js.publish(subjects.rooms_command(s.site, "create"), b"{not json"))
            s.drained()
            s.run(wait_drained(s.js, names.rooms_stream(s.site), names.ROOM_WORKER_DURABLE))
            mirror.assert_alive()
            rooms.assert_alive()
        assert s.db.rooms.count_documents({"_id": "r-new"}) == 1  # the flows really ran with those settings
        assert ("r1", "alice") in s.present()
        mirror_log, room_log = log_of(mirror), log_of(rooms)
        assert "inbox_mirror starting" in mirror_log and "room_worker starting" in room_log
        assert "***" in mirror_log and "***" in room_log  # the redacted URLs were logged
        assert "dead-lettered" in mirror_log and "dead-lettered" in room_log
        assert_no_secret(mirror_log, secrets, "inbox_mirror's log")
        assert_no_secret(room_log, secrets, "room_worker's log")


def test_search_sync_log_carries_no_password(servers: dict[str, Any]) -> None:
    secrets = all_secrets(servers)
    with mirror_site(servers) as s:
        # the operator's real credentials in the URL instead of CHATFED_ES_USER / _PASSWORD: the flow must work with them
        in_url = with_userinfo(servers["es_url"], servers["es_user"], servers["es_password"])
        env = flow_env(servers, s.site, CHATFED_ES_URL=in_url, CHATFED_ES_USER="", CHATFED_ES_PASSWORD="")
        flow = FlowProcess("dataflows.search_sync", env)
        with flow:
            ts = int(time.time() * 1000)
            event = MemberAddEvent(type="member_added", room_id="r1", room_name="n", accounts=["alice"], site_id=s.site, joined_at=ts, timestamp=ts)
            data = envelope_bytes(event, event_type="member_added", site=s.site, dest=s.site, timestamp=ts)
            published = s.run(s.js.publish(subjects.inbox_local(s.site, "member_added"), data))
            # a barrier on this event's ack, not on "nothing pending": that can hold before the server counts the
            # event, and the flow would be stopped before it even logged its start
            s.run(wait_for(lambda: _acked_through(s, names.SEARCH_SYNC_DURABLE, published.seq), what="the event acknowledged"))
            flow.assert_alive()
        text = log_of(flow)
        assert "search_sync starting" in text
        assert_no_secret(text, secrets, "search_sync's log")


def _cli(args: list[str], info: Path, timeout: float = 120) -> tuple[int | None, str]:
    """Exit code (None when it had to be stopped) and everything the CLI printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFED_")}
    env.update(CHATFED_INFO=str(info), PYTHONPATH=str(REPO), COLUMNS="400")
    command = [sys.executable, "-m", "chatfed_cli.main", *args]
    try:
        run = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # nats-py keeps retrying a refused login: read what it printed so far
        return None, _text(exc.stdout) + _text(exc.stderr)
    return run.returncode, run.stdout + run.stderr


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def test_cli_output_carries_no_password(servers: dict[str, Any], tmp_path: Path) -> None:
    topology = {**servers, "mongo_uri": with_userinfo(servers["mongo_uri"], servers["mongo_user"], servers["mongo_password"])}
    info = tmp_path / "info.json"
    info.write_text(json.dumps(topology))
    wrong = f"wrong-s3cret-{uuid.uuid4().hex[:8]}"

    def broken(**changes: Any) -> Path:
        bad = {**json.loads(json.dumps(topology)), **changes}
        path = tmp_path / f"bad-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(bad))
        return path

    bad_nats = json.loads(json.dumps(topology))["sites"]
    bad_nats["s1"]["nats_password"] = wrong
    secrets = [*all_secrets(servers), wrong]
    runs = {
        "status": _cli(["status"], info),
        "status --json": _cli(["status", "--json"], info),
        "dlq list": _cli(["dlq", "list", "--site", "s1", "--limit", "5"], info),
        "dlq list --json": _cli(["dlq", "list", "--site", "s2", "--limit", "5", "--json"], info),
        "search rooms": _cli(["search", "rooms", "gen", "--site", "s1", "--user", "nobody"], info),  # Elasticsearch, as the operator
    }
    for name, (code, text) in runs.items():
        assert code == 0, (name, code, text[-2000:])
        assert_no_secret(text, secrets, f"`chatfed {name}` output")
    assert "site s1" in runs["status"][1]
    _, refused = _cli(["status"], broken(sites=bad_nats), timeout=8)  # a refused login is logged (and retried)
    assert "Authorization Violation" in refused
    assert_no_secret(refused, secrets, "`chatfed status` output with a wrong password")
    code, refused = _cli(["user", "rooms", "--site", "s1", "--user", "nobody"], broken(es_password=wrong), timeout=60)
    assert code != 0 and "401" in refused, refused[-2000:]
    assert_no_secret(refused, secrets, "`chatfed user rooms` output with a wrong Elasticsearch password")


def test_no_log_file_of_the_servers_flows_or_tests_carries_a_secret(servers: dict[str, Any]) -> None:
    """Every log under .local/logs (NATS, FerretDB, Elasticsearch, the flows `./run.sh` and the tests started), at the
    end of whatever ran before this test in the session."""
    secrets = all_secrets(servers)
    scanned = 0
    for path in sorted((REPO / ".local" / "logs").rglob("*")):
        if not path.is_file() or path.name.startswith("gc.log") or path.stat().st_size > 200 * 1024 * 1024:
            continue
        text = path.read_text(errors="replace")
        scanned += 1
        assert_no_secret(text, secrets, str(path.relative_to(REPO)))
    assert scanned >= 5, scanned
