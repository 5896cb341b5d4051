"""`chatfed`: bootstrap the sites, inspect them, search, replay dead letters, rebuild search views.

The command table of the CLI in one place (a little over 300 lines): each command is a few lines of
argument handling over a module that does the work (inspect, rebuild, rooms, flows, connectors.dlq).
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum

import msgspec
import nats
import typer
from elasticsearch import Elasticsearch
from rich.console import Console
from rich.table import Table

from chatfed_cli import flows as flow_procs
from chatfed_cli import rooms
from chatfed_cli.inspect import SiteStatus, site_status
from chatfed_cli.topology import SiteInfo, Topology, load_topology
from connectors import dlq, natsio
from connectors.bootstrap import provision_sites, verify_site
from connectors.errors import ConfigError
from connectors.settings import load_tuning
from schemas import names

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
flows_app = typer.Typer(help="Run the dataflows of every site in the background.", no_args_is_help=True)
dlq_app = typer.Typer(help="List and replay a site's dead letters.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")
app.add_typer(dlq_app, name="dlq")
app.add_typer(rooms.app, name="room", help="Submit room commands to a site and print the result.")
console = Console()


async def connect(site: SiteInfo) -> nats.aio.client.Client:
    return await natsio.connect(site.operator())


async def _bootstrap(topology: Topology, sites: list[str]) -> None:
    """Durables take max_deliver and ack_wait from the flows' settings in this environment (CHATFED_MAX_DELIVER, ...);
    then each site's search views are installed (Elasticsearch)."""
    try:
        tuning = load_tuning()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    clients = {site: await connect(topology.sites[site]) for site in sites}
    try:
        await provision_sites(clients, topology.site_ids, tuning=tuning)  # every OUTBOX first: no source waits for a peer
        for site, client in clients.items():
            await verify_site(client.jetstream(), site, topology.site_ids, tuning=tuning)
            typer.echo(f"{site}: streams, sources and consumers ready (max_deliver {tuning.max_deliver}, ack_wait {tuning.ack_wait_s} s)")
    finally:
        for client in clients.values():
            await client.close()
    _install_search_views(topology, sites)


def _install_search_views(topology: Topology, sites: list[str]) -> None:
    """Templates, indexes and aliases of each site's search views, as the operator: search_sync's own user may not."""
    from connectors.elastic import elastic_client
    from connectors.settings import ElasticSettings
    from dataflows.search_sync import indexes

    es = elastic_client(topology.elastic())
    try:
        for site in sites:
            indexes.install(es, indexes.SearchIndexes.for_site(ElasticSettings(), site))
    finally:
        es.close()


@app.command()
def bootstrap(
    site: list[str] = typer.Option([], "--site", "-s", help="Only these sites (default: every configured site)."),
) -> None:
    """Create or update every stream, source and durable consumer, then verify them; install the search views (idempotent)."""
    topology = load_topology()
    chosen = site or topology.site_ids
    unknown = [s for s in chosen if s not in topology.sites]
    if unknown:
        raise typer.BadParameter(f"unknown site(s) {', '.join(unknown)}; configured: {', '.join(topology.site_ids)}")
    asyncio.run(_bootstrap(topology, chosen))


def _site(topology: Topology, site: str) -> SiteInfo:
    if site not in topology.sites:
        raise typer.BadParameter(f"unknown site {site!r}; configured: {', '.join(topology.site_ids)}", param_hint="--site")
    return topology.sites[site]


async def _statuses(topology: Topology) -> list[SiteStatus]:
    procs = flow_procs.running()
    statuses = []
    for site, info in topology.sites.items():
        client = await connect(info)
        try:
            statuses.append(await site_status(client, site, procs))
        finally:
            await client.close()
    return statuses


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s ago"


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """Per site: each durable's backlog, redeliveries and last activity, each INBOX source's lag, each flow's processes.

    A durable is `drained` only when nothing is pending and nothing awaits an ack: work in progress keeps its
    messages unacknowledged (they get `+WPI`), so a flow still working never shows as drained.
    """
    statuses = asyncio.run(_statuses(load_topology()))
    if as_json:
        typer.echo(msgspec.json.encode(statuses).decode())
        return
    for st in statuses:
        table = Table(title=f"site {st.site}", title_justify="left")
        for column in ("what", "name", "pending", "ack pending", "redelivered", "detail"):
            table.add_column(column)
        for d in st.durables:
            detail = "missing" if not d.exists else f"{d.state}; {d.waiting} pull(s) waiting; last delivery {_ago(d.last_delivered_s)}, last ack {_ago(d.last_acked_s)}"
            table.add_row("durable", f"{d.stream}/{d.durable}", str(d.pending), str(d.ack_pending), str(d.redelivered), detail)
        for src in st.sources:
            active = "never" if src.active_s is None else f"active {src.active_s:.1f}s ago"
            table.add_row("source", src.name, f"lag {src.lag}", "", "", src.error or active)
        for f in st.flows:
            table.add_row("flow", f.flow, "", "", "", "alive pid " + ",".join(map(str, f.processes)) if f.alive else "NOT RUNNING")
        console.print(table)


@flows_app.command("up")
def flows_up(
    processes: int = typer.Option(1, "--processes", "-p", min=1, max=16, help="Processes per flow (a Bytewax cluster)."),
    timeout: float = typer.Option(60, help="Seconds to wait until every flow is consuming."),
) -> None:
    """Bootstrap, start every flow of every site, and return once each one is pulling from its durable."""
    topology = load_topology()
    asyncio.run(_bootstrap(topology, topology.site_ids))
    started = flow_procs.start(topology, processes=processes)
    for proc in started:
        typer.echo(f"started {proc.name} pid {proc.pid}")
    deadline = time.monotonic() + timeout
    while True:
        statuses = asyncio.run(_statuses(topology))
        idle = [
            f"{st.site}/{d.durable}"
            for st in statuses
            for d in st.durables
            if d.waiting == 0
        ]
        dead = [f"{st.site}/{f.flow}" for st in statuses for f in st.flows if not f.alive]
        if dead:
            typer.echo(f"flow(s) exited: {', '.join(dead)}; see {flow_procs.LOG_DIR}", err=True)
            flow_procs.terminate(started)  # leave nothing half-started behind
            raise typer.Exit(1)
        if not idle:
            typer.echo("every flow is consuming")
            return
        if time.monotonic() > deadline:
            typer.echo(f"not consuming after {timeout:.0f}s: {', '.join(idle)}; see {flow_procs.LOG_DIR}", err=True)
            flow_procs.terminate(started)
            raise typer.Exit(1)
        time.sleep(0.5)


@flows_app.command("down")
def flows_down() -> None:
    """Stop every flow process started by `flows up`."""
    for proc in flow_procs.stop():
        typer.echo(f"stopped {proc.name} pid {proc.pid}")


@flows_app.command("status")
def flows_status() -> None:
    """List the flow processes that are alive."""
    procs = flow_procs.running()
    for proc in procs:
        typer.echo(f"{proc.name}\tpid {proc.pid}")
    if not procs:
        typer.echo("no flow running")


@dlq_app.command("list")
def dlq_list(
    site: str = typer.Option(..., "--site", "-s"),
    limit: int = typer.Option(100, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The dead letters of a site, oldest first: why, and where each came from."""
    info = _site(load_topology(), site)

    async def fetch() -> list[dlq.DeadLetter]:
        client = await connect(info)
        try:
            return await dlq.list_dead_letters(client, site, limit=limit)
        finally:
            await client.close()

    letters = asyncio.run(fetch())
    if as_json:
        typer.echo(msgspec.json.encode([msgspec.structs.replace(x, data=b"") for x in letters]).decode())
        return
    table = Table(title=f"{names.dlq_stream(site)}: {len(letters)} dead letter(s)", title_justify="left")
    for column in ("seq", "flow", "from", "deliveries", "reason"):
        table.add_column(column)
    for x in letters:
        table.add_row(str(x.seq), x.flow, f"{x.stream}#{x.stream_seq} {x.subject}", str(x.deliveries), x.reason)
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    site: str = typer.Option(..., "--site", "-s"),
    seq: list[int] = typer.Option([], "--seq", help="Only these DLQ sequence numbers (default: all)."),
    flow: str = typer.Option("", help="Only dead letters of this flow."),
    keep: bool = typer.Option(False, help="Keep the dead letters after replaying them."),
) -> None:
    """Publish dead letters back to their original subjects with a new dedup id, then remove them."""
    info = _site(load_topology(), site)

    async def run_replay() -> int:
        client = await connect(info)
        try:
            letters = await dlq.list_dead_letters(client, site, limit=1_000_000)
            chosen = [x for x in letters if (not seq or x.seq in seq) and (not flow or x.flow == flow)]
            missing = set(seq) - {x.seq for x in chosen}
            if missing:
                raise typer.BadParameter(f"no dead letter with seq {sorted(missing)}", param_hint="--seq")
            return await dlq.replay(client, site, chosen, keep=keep)
        finally:
            await client.close()

    typer.echo(f"replayed {asyncio.run(run_replay())} dead letter(s)")


search_app = typer.Typer(help="Query a site's search views.", no_args_is_help=True)
user_app = typer.Typer(help="What a user sees on a site.", no_args_is_help=True)
app.add_typer(search_app, name="search")
app.add_typer(user_app, name="user")


def _elastic(topology: Topology) -> Elasticsearch:
    from connectors.elastic import elastic_client

    return elastic_client(topology.elastic())


@search_app.command("rooms")
def search_rooms(
    query: str = typer.Argument(..., help="Room name as typed so far."),
    site: str = typer.Option(..., "--site", "-s"),
    user: str = typer.Option(..., "--user", "-u", help="Whose rooms to search."),
    room_type: str = typer.Option("", "--type", help="Only rooms of this type (channel, dm, botDM)."),
    size: int = typer.Option(10, min=1, max=100),
) -> None:
    """Room-name typeahead for a user: their rooms matching QUERY, best first."""
    from dataflows.search_sync.queries import typeahead

    topology = load_topology()
    _site(topology, site)
    hits = typeahead(_elastic(topology), names.spotlight_alias(site), user, query, room_type or None, size)
    for hit in hits:
        typer.echo(f"{hit.room_id}\t{hit.room_type}\t{hit.room_name}")
    if not hits:
        typer.echo("no match", err=True)


@user_app.command("rooms")
def user_rooms(
    site: str = typer.Option(..., "--site", "-s"),
    user: str = typer.Option(..., "--user", "-u"),
) -> None:
    """The rooms a user may search on a site: full history, and history-restricted since a time."""
    from dataflows.search_sync.queries import rooms_for

    topology = load_topology()
    _site(topology, site)
    doc = rooms_for(_elastic(topology), names.user_room_alias(site), user)
    if doc is None:
        typer.echo(f"{user} has no searchable rooms on {site}", err=True)
        raise typer.Exit(1)
    typer.echo(msgspec.json.encode({"rooms": doc.rooms, "restrictedRooms": doc.restricted_rooms}).decode())


class RebuildMethod(StrEnum):
    BULK = "bulk"
    REPLAY = "replay"


@app.command()
def rebuild(
    site: str = typer.Option(..., "--site", "-s"),
    keep_old: bool = typer.Option(False, help="Keep the old indexes after the swap."),
    method: RebuildMethod = typer.Option(
        RebuildMethod.BULK, help="bulk: fold the stream in memory and bulk-load; replay: the guarded flow replays it (slower)."
    ),
) -> None:
    """Rebuild a site's search views from its INBOX stream into new indexes, then swap the aliases atomically."""
    from rich.progress import Progress

    from chatfed_cli.flows import flow_env
    from chatfed_cli.rebuild import rebuild_site

    topology = load_topology()
    info = _site(topology, site)
    with Progress(console=console) as bar:
        task = bar.add_task(f"replaying {names.inbox_stream(site)}", total=None)
        report = rebuild_site(
            site=site,
            nats_settings=info.operator(),
            elastic_settings=topology.elastic(),
            flow_env=flow_env(topology, site),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            keep_old=keep_old,
            method=method.value,
        )
    typer.echo(
        f"rebuilt {site}: {report.events} events -> {report.documents} documents in {report.fill_seconds:.1f}s "
        f"({report.docs_per_second:.0f} docs/s); aliases now on {', '.join(report.new_indexes.values())}"
    )


@app.command()
def demo(timeout: float = typer.Option(30, help="Seconds each step may take to become visible everywhere.")) -> None:
    """Seed users on both sites and play the scenario; exit 1 with the difference if any view disagrees."""
    from chatfed_cli.demo import run_demo  # imports the flows' connectors: keep other commands light

    if not run_demo(load_topology(), timeout=timeout, console=console):
        raise typer.Exit(1)


def run() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    run()
