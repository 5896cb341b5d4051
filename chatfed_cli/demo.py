"""The main job's scenario: room commands on a two-site federation, each awaited until visible everywhere.

One script read top to bottom (about 400 lines): the scenario's steps, what each must make
visible on which site, and the summary; splitting it would scatter one story over several files.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
from elasticsearch import ApiError, Elasticsearch, TransportError
from pymongo.database import Database
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from chatfed_cli.rooms import submit
from chatfed_cli.topology import Topology
from connectors.elastic import elastic_client
from connectors.mongo import Document
from connectors.mongo import client as mongo_client
from dataflows.room_worker.plans import direct_room_id
from dataflows.search_sync.queries import rooms_for, typeahead
from schemas import names, subjects
from schemas.commands import AddMembers, CreateRoom, History, RemoveMember, RenameRoom, RoomCommand, UpdateRole
from schemas.documents import User, spotlight_doc_id, to_mongo
from schemas.errors import DecodeError

HOME, REMOTE = "home", "remote"  # roles; the sites are the topology's first two (s1 and s2 by default)


class Person(msgspec.Struct, frozen=True, kw_only=True):
    """One user of the demo's directory; `id` is only the one to insert when the account does not exist yet."""

    id: str
    account: str
    role: str  # HOME or REMOTE
    sect_id: str
    dept_id: str = ""
    name: str


PEOPLE = [
    Person(id="u-alice", account="alice", role=HOME, sect_id="eng", dept_id="platform", name="Alice"),
    Person(id="u-bob", account="bob", role=HOME, sect_id="eng", dept_id="platform", name="Bob"),
    Person(id="u-frank", account="frank", role=HOME, sect_id="design", dept_id="ux", name="Frank"),
    Person(id="u-helper", account="helper.bot", role=HOME, sect_id="eng", name="Helper bot"),
    Person(id="u-carol", account="carol", role=REMOTE, sect_id="eng", dept_id="search", name="Carol"),
    Person(id="u-dave", account="dave", role=REMOTE, sect_id="design", dept_id="ux", name="Dave"),
    Person(id="u-erin", account="erin", role=REMOTE, sect_id="design", dept_id="research", name="Erin"),
]
TYPEAHEAD = ("eng", "des", "al", "car", "hel")
RENAMED = "eng-core"  # eng-platform's new name: typeahead for "eng-platform" must no longer find the room
ORG_FIELDS = ("sectId", "deptId")  # what org expansion matches: a field the demo's user lacks is removed


class DemoError(Exception):
    """Why the demo cannot run; printed as one line."""


class Cast(msgspec.Struct, frozen=True, kw_only=True):
    """The demo's users as the home site's directory holds them: their sites and the ids actually stored."""

    home: str
    remote: str
    users: list[User]

    @property
    def home_of(self) -> dict[str, str]:
        return {user.account: user.site_id for user in self.users}

    @property
    def id_of(self) -> dict[str, str]:
        return {user.account: user.id for user in self.users}


class Expect(msgspec.Struct, frozen=True):
    """`account` is (or is not) a member of `room` as seen by `site`'s stores."""

    site: str
    room: str
    account: str
    member: bool

    def describe(self) -> str:
        return f"{self.account} {'in' if self.member else 'not in'} {self.room}"


class HasRole(msgspec.Struct, frozen=True):
    """`account`'s subscription to `room` on `site` carries `role`."""

    site: str
    room: str
    account: str
    role: str

    def describe(self) -> str:
        return f"{self.account} {self.role} of {self.room}"


class Named(msgspec.Struct, frozen=True):
    """On `site`, `account`'s subscription to `room` is named `name`, and typeahead finds it by `name`, not by `old`."""

    site: str
    room: str
    account: str
    name: str
    old: str

    def describe(self) -> str:
        return f"{self.account} sees {self.room} as {self.name!r}, not {self.old!r}"


Expectation = Expect | HasRole | Named


class Step(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    op: str
    command: RoomCommand
    requester: str
    expect: list[Expectation]


def _sites_of(cast: Cast, accounts: list[str]) -> list[tuple[str, str]]:
    """(site, account) for each site that sees a membership: the home site every member, a remote site its own users."""
    home_of = cast.home_of
    return [(cast.home, a) for a in accounts] + [(home_of[a], a) for a in accounts if home_of[a] != cast.home]


def _members(cast: Cast, room: str, accounts: list[str], member: bool = True) -> list[Expect]:
    """Membership (or its absence) as each site that sees it holds it: subscription, user-room, spotlight."""
    return [Expect(site, room, account, member) for site, account in _sites_of(cast, accounts)]


def scenario(cast: Cast, now_ms: int, suffix: str) -> list[Step]:
    eng, design = f"r-eng-{suffix}", f"r-design-{suffix}"
    ids = cast.id_of
    alice = ids["alice"]
    dm = direct_room_id(alice, ids["carol"])
    bot = direct_room_id(alice, ids["helper.bot"])
    here, there = cast.home, cast.remote
    return [
        Step(
            title=f"create channel eng-platform (alice; bob on {here}, carol on {there})",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="eng-platform", users=["bob", "carol"], room_id=eng, requester_id=alice, requester_account="alice", timestamp=now_ms),
            requester="alice",
            expect=_members(cast, eng, ["alice", "bob", "carol"]),
        ),
        Step(
            title="create dm alice ↔ carol (across sites)",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="", users=["carol"], room_id=dm, requester_id=alice, requester_account="alice", timestamp=now_ms + 1),
            requester="alice",
            expect=_members(cast, dm, ["alice", "carol"]),
        ),
        Step(
            title="create botDM alice ↔ helper.bot",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="", users=["helper.bot"], room_id=bot, requester_id=alice, requester_account="alice", timestamp=now_ms + 2),
            requester="alice",
            expect=_members(cast, bot, ["alice", "helper.bot"]),
        ),
        Step(
            title=f"add frank ({here}) to eng-platform",
            op=subjects.RoomOp.MEMBER_ADD.value,
            command=AddMembers(room_id=eng, users=["frank"], requester_account="alice", requester_id=alice, timestamp=now_ms + 3),
            requester="alice",
            expect=_members(cast, eng, ["frank"]),
        ),
        Step(
            title=f"add dave ({there}) to eng-platform, history hidden",
            op=subjects.RoomOp.MEMBER_ADD.value,
            command=AddMembers(room_id=eng, users=["dave"], history=History(mode="none"), requester_account="alice", requester_id=alice, timestamp=now_ms + 4),
            requester="alice",
            expect=_members(cast, eng, ["dave"]),
        ),
        Step(
            title="bob leaves eng-platform",
            op=subjects.RoomOp.MEMBER_REMOVE.value,
            command=RemoveMember(room_id=eng, requester="bob", account="bob", timestamp=now_ms + 5),
            requester="bob",
            expect=_members(cast, eng, ["bob"], member=False),
        ),
        Step(
            title="create channel design-review with org design and erin individually",
            op=subjects.RoomOp.CREATE.value,
            command=CreateRoom(name="design-review", users=["erin"], orgs=["design"], room_id=design, requester_id=alice, requester_account="alice", timestamp=now_ms + 6),
            requester="alice",
            expect=_members(cast, design, ["alice", "frank", "dave", "erin"]),
        ),
        Step(
            title="remove org design from design-review (erin stays: individual member)",
            op=subjects.RoomOp.MEMBER_REMOVE.value,
            command=RemoveMember(room_id=design, requester="alice", org_id="design", timestamp=now_ms + 7),
            requester="alice",
            expect=_members(cast, design, ["frank", "dave"], member=False) + _members(cast, design, ["erin", "alice"]),
        ),
        Step(
            title=f"promote carol ({there}) to owner of eng-platform",
            op=subjects.RoomOp.MEMBER_ROLE_UPDATE.value,
            command=UpdateRole(room_id=eng, account="carol", new_role="owner", requester_id=alice, requester_account="alice", timestamp=now_ms + 8),
            requester="alice",
            expect=[HasRole(site, eng, "carol", "owner") for site, _ in _sites_of(cast, ["carol"])],
        ),
        Step(
            title=f"rename eng-platform to {RENAMED} (typeahead and subscriptions)",
            op=subjects.RoomOp.RENAME.value,
            command=RenameRoom(room_id=eng, new_name=RENAMED, requester_id=alice, requester_account="alice", timestamp=now_ms + 9),
            requester="alice",
            expect=[Named(site, eng, a, RENAMED, "eng-platform") for site, a in _sites_of(cast, ["alice", "carol", "frank", "dave"])],
        ),
    ]


class SiteViews:
    """What one site's stores say about a membership."""

    def __init__(self, topology: Topology, site: str) -> None:
        mongo = topology.mongo(site)
        self.site = site
        self.db: Database[Document] = mongo_client(mongo)[mongo.database]
        self.es: Elasticsearch = elastic_client(topology.elastic())
        self.user_room = names.user_room_alias(site)
        self.spotlight = names.spotlight_alias(site)

    def seed(self, users: list[User]) -> list[User]:
        """Make the directory hold `users`, adopting accounts that exist already (their `_id` is kept).

        Upserted by account: the demo's fields are set, `_id` only on insert (a fresh one if another account
        holds the proposed id). Returns the users as stored, i.e. with the ids every command must use.
        """
        for user in users:
            doc = to_mongo(user)
            proposed = doc.pop("_id")
            holder = self.db.users.find_one({"_id": proposed}, {"account": 1})
            if holder is not None and holder.get("account") != user.account:
                proposed = f"{proposed}-{uuid.uuid4().hex[:8]}"
            update: dict[str, Any] = {"$set": doc, "$setOnInsert": {"_id": proposed}}
            if absent := {field: "" for field in ORG_FIELDS if field not in doc}:
                update["$unset"] = absent
            self.db.users.update_one({"account": user.account}, update, upsert=True)
        accounts = [user.account for user in users]
        stored: dict[str, list[str]] = {}
        for found in self.db.users.find({"account": {"$in": accounts}}, {"account": 1}):
            stored.setdefault(found["account"], []).append(str(found["_id"]))
        for account in accounts:
            ids = stored.get(account, [])
            if len(ids) != 1:
                what = "is missing" if not ids else f"is held by {len(ids)} users ({', '.join(sorted(ids))})"
                raise DemoError(f"site {self.site}: account {account!r} {what} in {self.db.name}.users after seeding")
        return [msgspec.structs.replace(user, id=stored[user.account][0]) for user in users]

    def holds(self, expect: Expectation) -> dict[str, bool]:
        """For each store, whether it agrees with `expect`."""
        if isinstance(expect, HasRole):
            sub = self.db.subscriptions.find_one({"roomId": expect.room, "u.account": expect.account}, {"roles": 1})
            return {"mongo": sub is not None and expect.role in (sub.get("roles") or [])}
        if isinstance(expect, Named):
            sub = self.db.subscriptions.find_one({"roomId": expect.room, "u.account": expect.account}, {"name": 1})
            return {"mongo": sub is not None and sub.get("name") == expect.name, "typeahead": self._found_only_as(expect)}
        sub = self.db.subscriptions.find_one({"roomId": expect.room, "u.account": expect.account}) is not None
        doc = rooms_for(self.es, self.user_room, expect.account)
        searchable = doc is not None and (expect.room in doc.rooms or expect.room in doc.restricted_rooms)
        spot = bool(self.es.exists(index=self.spotlight, id=spotlight_doc_id(account=expect.account, room_id=expect.room)))
        return {"mongo": sub == expect.member, "user-room": searchable == expect.member, "spotlight": spot == expect.member}

    def _found_only_as(self, expect: Named) -> bool:
        """Typeahead finds the room when typing its new name, and not when typing its old one (other runs' rooms may share both)."""

        def found(text: str) -> bool:
            return any(hit.room_id == expect.room for hit in typeahead(self.es, self.spotlight, expect.account, text, size=100))

        return found(expect.name) and not found(expect.old)


def seed_directory(views: dict[str, SiteViews], home: str, remote: str) -> Cast:
    """Seed the demo's users on every site, home first; a site that lacks an account inserts it under the home's id."""
    site_of = {HOME: home, REMOTE: remote}
    wanted = [
        User(id=p.id, account=p.account, site_id=site_of[p.role], sect_id=p.sect_id, dept_id=p.dept_id, name=p.name)
        for p in PEOPLE
    ]
    cast = Cast(home=home, remote=remote, users=views[home].seed(wanted))
    for site, view in views.items():
        if site != home:
            view.seed(cast.users)
    return cast


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
                f"{site} {store}: {e.describe()}"
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


# the servers refused, are unreachable or answered something unexpected: one line, never a traceback
SERVER_ERRORS: tuple[type[Exception], ...] = (PyMongoError, ApiError, TransportError, nats.errors.Error, OSError, DecodeError, msgspec.DecodeError)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def run_demo(topology: Topology, *, timeout: float = 30, console: Console | None = None) -> bool:
    """Seed users, play the scenario, print the summary; True when every expectation held.

    Whatever goes wrong is printed as one line and answers False (the CLI exits 1): never a traceback.
    """
    console = console or Console()
    try:
        return _run(topology, timeout, console)
    except DemoError as exc:
        console.print(f"[red]demo failed[/red]: {escape(str(exc))}", soft_wrap=True, highlight=False)
    except SERVER_ERRORS as exc:
        console.print(f"[red]demo failed[/red]: {escape(_one_line(exc))}", soft_wrap=True, highlight=False)
    except Exception as exc:  # noqa: BLE001 - the main job reports, it does not crash
        console.print(f"[red]demo failed[/red]: unexpected {escape(_one_line(exc))}", soft_wrap=True, highlight=False)
    return False


def _run(topology: Topology, timeout: float, console: Console) -> bool:
    if len(topology.site_ids) < 2:
        raise DemoError(f"the demo needs two sites, the topology has {len(topology.site_ids)}: {' '.join(topology.site_ids) or '-'}")
    home, remote = topology.site_ids[:2]
    views = {site: SiteViews(topology, site) for site in (home, remote)}
    try:
        cast = seed_directory(views, home, remote)
    except PyMongoError as exc:
        raise DemoError(f"seeding the demo's users failed: {_one_line(exc)}") from exc
    steps = scenario(cast, int(time.time() * 1000), suffix=str(int(time.time())))
    timings: list[tuple[str, dict[str, float]]] = []
    failures: list[str] = []
    with console.status("starting") as status:
        for number, step in enumerate(steps, 1):
            status.update(f"step {number}/{len(steps)}: {step.title}")
            started = time.monotonic()
            try:
                result: dict[str, Any] = asyncio.run(submit(topology.sites[home], home, step.op, step.command, step.requester, timeout))
            except nats.errors.TimeoutError:
                failures.append(f"step {number} ({step.title}): no command result within {timeout:.0f}s (is room_worker of {home} running?)")
                break
            if result.get("status") != "ok":
                failures.append(f"step {number} ({step.title}): command failed: {result}")
                break
            done_at, missing = _wait(views, step, started, timeout, _progress(status, f"step {number}/{len(steps)}"))
            timings.append((step.title, done_at))
            if missing:
                failures.extend(f"step {number} ({step.title}): {m}" for m in missing)
                break
    _summary(console, cast, views, timings)
    for failure in failures:
        console.print(f"[red]FAILED[/red] {escape(failure)}", soft_wrap=True)
    return not failures


def _summary(console: Console, cast: Cast, views: dict[str, SiteViews], timings: list[tuple[str, dict[str, float]]]) -> None:
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
        for user in cast.users:
            doc = rooms_for(view.es, view.user_room, user.account)
            if doc is None:
                continue
            hits = [f"{hit.room_name} ({hit.room_type})" for q in TYPEAHEAD for hit in typeahead(view.es, view.spotlight, user.account, q)]
            rooms.add_row(user.account, ", ".join(doc.rooms) or "-", ", ".join(doc.restricted_rooms) or "-", "; ".join(dict.fromkeys(hits)) or "-")
        console.print(rooms)
