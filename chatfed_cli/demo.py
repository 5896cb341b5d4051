"""The main job's scenario: room commands on a two-site federation, each awaited until visible everywhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
from elasticsearch import Elasticsearch
from pymongo.database import Database
from rich.console import Console
from rich.status import Status
from rich.table import Table

from chatfed_cli.rooms import submit
from chatfed_cli.topology import Topology
from connectors.elastic import elastic_client
from connectors.mongo import Document, client as mongo_client
from connectors.search_queries import rooms_for, typeahead
from connectors.settings import ElasticSettings, MongoSettings
from logic.room_plans import direct_room_id
from schemas import subjects
from schemas.commands import AddMembers, CreateRoom, History, RemoveMember
from schemas.documents import User, spotlight_doc_id, to_mongo

HOME = "s1"
REMOTE = "s2"
USERS = [
    User(id="u-alice", account="alice", site_id=HOME, sect_id="eng", dept_id="platform", name="Alice"),
    User(id="u-bob", account="bob", site_id=HOME, sect_id="eng", dept_id="platform", name="Bob"),
    User(id="u-frank", account="frank", site_id=HOME, sect_id="design", dept_id="ux", name="Frank"),
    User(id="u-helper", account="helper.bot", site_id=HOME, sect_id="eng", name="Helper bot"),
    User(id="u-carol", account="carol", site_id=REMOTE, sect_id="eng", dept_id="search", name="Carol"),
    User(id="u-dave", account="dave", site_id=REMOTE, sect_id="design", dept_id="ux", name="Dave"),
    User(id="u-erin", account="erin", site_id=REMOTE, sect_id="design", dept_id="research", name="Erin"),
]
TYPEAHEAD = ("eng", "des", "al", "car", "hel")
HOME_OF = {user.account: user.site_id for user in USERS}
ID_OF = {user.account: user.id for user in USERS}


class Expect(msgspec.Struct, frozen=True):
    """`account` is (or is not) a member of `room` as seen by `site`'s stores."""

    site: str
    room: str
    account: str
    member: bool


class Step(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    op: str
    command: CreateRoom | AddMembers | RemoveMember
    requester: str
    expect: list[Expect]


def _members(room: str, accounts: list[str], member: bool = True) -> list[Expect]:
    """Home site sees every member; a remote site sees its own users (mirrored + searchable)."""
    found = [Expect(HOME, room, account, member) for account in accounts]
    return found + [Expect(HOME_OF[a], room, a, member) for a in accounts if HOME_OF[a] != HOME]


def scenario(now_ms: int, suffix: str) -> list[Step]:
    eng, design = f"r-eng-{suffix}", f"r-design-{suffix}"
    dm = direct_room_id(ID_OF["alice"], ID_OF["carol"])
    bot = direct_room_id(ID_OF["alice"], ID_OF["helper.bot"])
    return [
        Step(
            title="create channel eng-platform (alice; bob on s1, carol on s2)",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="eng-platform", users=["bob", "carol"], room_id=eng, requester_id="u-alice", requester_account="alice", timestamp=now_ms),
            requester="alice",
            expect=_members(eng, ["alice", "bob", "carol"]),
        ),
        Step(
            title="create dm alice ↔ carol (across sites)",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="", users=["carol"], room_id=dm, requester_id="u-alice", requester_account="alice", timestamp=now_ms + 1),
            requester="alice",
            expect=_members(dm, ["alice", "carol"]),
        ),
        Step(
            title="create botDM alice ↔ helper.bot",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="", users=["helper.bot"], room_id=bot, requester_id="u-alice", requester_account="alice", timestamp=now_ms + 2),
            requester="alice",
            expect=_members(bot, ["alice", "helper.bot"]),
        ),
        Step(
            title="add frank (s1) to eng-platform",
            op=subjects.RoomOp.MEMBER_ADD.value,
            command=AddMembers(room_id=eng, users=["frank"], requester_account="alice", requester_id="u-alice", timestamp=now_ms + 3),
            requester="alice",
            expect=_members(eng, ["frank"]),
        ),
        Step(
            title="add dave (s2) to eng-platform, history hidden",
            op=subjects.RoomOp.MEMBER_ADD.value,
            command=AddMembers(room_id=eng, users=["dave"], history=History(mode="none"), requester_account="alice", requester_id="u-alice", timestamp=now_ms + 4),
            requester="alice",
            expect=_members(eng, ["dave"]),
        ),
        Step(
            title="bob leaves eng-platform",
            op=subjects.RoomOp.MEMBER_REMOVE.value,
            command=RemoveMember(room_id=eng, requester="bob", account="bob", timestamp=now_ms + 5),
            requester="bob",
            expect=_members(eng, ["bob"], member=False),
        ),
        Step(
            title="create channel design-review with org design and erin individually",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="design-review", users=["erin"], orgs=["design"], room_id=design, requester_id="u-alice", requester_account="alice", timestamp=now_ms + 6),
            requester="alice",
            expect=_members(design, ["alice", "frank", "dave", "erin"]),
        ),
        Step(
            title="remove org design from design-review (erin stays: individual member)",
            op=subjects.RoomOp.MEMBER_REMOVE.value,
            command=RemoveMember(room_id=design, requester="alice", org_id="design", timestamp=now_ms + 7),
            requester="alice",
            expect=_members(design, ["frank", "dave"], member=False) + _members(design, ["erin", "alice"]),
        ),
    ]


class SiteViews:
    """What one site's stores say about a membership."""

    def __init__(self, topology: Topology, site: str) -> None:
        info = topology.sites[site]
        self.site = site
        self.db: Database[Document] = mongo_client(MongoSettings(uri=topology.mongo_uri, database=info.mongo_db))[info.mongo_db]
        self.es: Elasticsearch = elastic_client(ElasticSettings(url=topology.es_url))
        self.user_room = f"user-room-{site}"
        self.spotlight = f"spotlight-{site}"

    def seed(self) -> None:
        for user in USERS:
            doc = to_mongo(user)
            self.db.users.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def holds(self, expect: Expect) -> dict[str, bool]:
        """For each store, whether it agrees with `expect`."""
        sub = self.db.subscriptions.find_one({"roomId": expect.room, "u.account": expect.account}) is not None
        doc = rooms_for(self.es, self.user_room, expect.account)
        searchable = doc is not None and (expect.room in doc.rooms or expect.room in doc.restricted_rooms)
        spot = bool(self.es.exists(index=self.spotlight, id=spotlight_doc_id(account=expect.account, room_id=expect.room)))
        return {"mongo": sub == expect.member, "user-room": searchable == expect.member, "spotlight": spot == expect.member}


def _wait(views: dict[str, SiteViews], step: Step, started: float, timeout: float, tick: Callable[[str], None]) -> tuple[dict[str, float], list[str]]:
    """Seconds until each site agreed with every expectation of `step`, and what still disagreed at the timeout."""
    done_at: dict[str, float] = {}
    sites = sorted({e.site for e in step.expect})
    while True:
        missing: list[str] = []
        for site in sites:
            if site in done_at:
                continue
            wrong = [
                f"{site} {store}: {e.account} {'in' if e.member else 'not in'} {e.room}"
                for e in step.expect
                if e.site == site
                for store, ok in views[site].holds(e).items()
                if not ok
            ]
            if wrong:
                missing.extend(wrong)
            else:
                done_at[site] = time.monotonic() - started
        if not missing:
            return done_at, []
        if time.monotonic() - started > timeout:
            return done_at, missing
        tick(f"{step.title}: waiting for {len(missing)} view(s), e.g. {missing[0]}")
        time.sleep(0.05)


def _progress(status: Status, prefix: str) -> Callable[[str], None]:
    return lambda text: status.update(f"{prefix}: {text}")


def run_demo(topology: Topology, *, timeout: float = 30, console: Console | None = None) -> bool:
    """Seed users, play the scenario, print the summary; True when every expectation held."""
    console = console or Console()
    views = {site: SiteViews(topology, site) for site in (HOME, REMOTE)}
    for view in views.values():
        view.seed()
    steps = scenario(int(time.time() * 1000), suffix=str(int(time.time())))
    timings: list[tuple[str, dict[str, float]]] = []
    failures: list[str] = []
    with console.status("starting") as status:
        for number, step in enumerate(steps, 1):
            status.update(f"step {number}/{len(steps)}: {step.title}")
            started = time.monotonic()
            result: dict[str, Any] = asyncio.run(submit(topology.sites[HOME], HOME, step.op, step.command, step.requester, timeout))
            if result.get("status") != "ok":
                failures.append(f"step {number} ({step.title}): command failed: {result}")
                break
            done_at, missing = _wait(views, step, started, timeout, _progress(status, f"step {number}/{len(steps)}"))
            timings.append((step.title, done_at))
            if missing:
                failures.extend(f"step {number} ({step.title}): {m}" for m in missing)
                break
    _summary(console, views, timings)
    for failure in failures:
        console.print(f"[red]FAILED[/red] {failure}")
    return not failures


def _summary(console: Console, views: dict[str, SiteViews], timings: list[tuple[str, dict[str, float]]]) -> None:
    table = Table(title="command → visible everywhere it should be (seconds)", title_justify="left")
    table.add_column("step")
    for site in views:
        table.add_column(site, justify="right")
    for title, done_at in timings:
        table.add_row(title, *(f"{done_at[s]:.2f}" if s in done_at else "-" for s in views))
    console.print(table)
    for site, view in views.items():
        rooms = Table(title=f"site {site}: searchable rooms, and typeahead for {', '.join(map(repr, TYPEAHEAD))}", title_justify="left")
        for column in ("user", "rooms", "restricted", "typeahead"):
            rooms.add_column(column)
        for user in USERS:
            doc = rooms_for(view.es, view.user_room, user.account)
            if doc is None:
                continue
            hits = [f"{hit.room_name} ({hit.room_type})" for q in TYPEAHEAD for hit in typeahead(view.es, view.spotlight, user.account, q)]
            rooms.add_row(user.account, ", ".join(doc.rooms) or "-", ", ".join(doc.restricted_rooms) or "-", "; ".join(dict.fromkeys(hits)) or "-")
        console.print(rooms)
