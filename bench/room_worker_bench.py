"""Commands per second of room_worker on a backlog of channel creates, beside a sequential consumer in the same run.

Run with the servers up: `.venv/bin/python -m bench.room_worker_bench [N] [--loaded] [--paced M] [--no-baseline]
[--backend sqlite|postgresql] [--flush-ms MS]` (N creates, default 500). `--loaded` first fills each site's database
with bench/realistic_data.py (20k users, 5k rooms, 100k subscriptions and room_members rows); `--paced M` then sends M
more creates at 100 commands/s to the running flow and reports command -> result latency p50/p95/p99
(bench/room_worker_paced.py). `--backend`: on a private NATS + FerretDB with that backend (bench/stores.py) instead of
the dev servers; `--flush-ms`: the flow's CHATFED_FLUSH_MS. CPU: of the flow process, FerretDB and PostgreSQL.

Each create names 3 members (the requester, a home user, a remote user), so it writes a room and 3
subscriptions and publishes a local `member_added`, one OUTBOX event and the requester's result. The
backlog is published first, then the flow is started; its start-up (process start to first delivery)
is reported apart and excluded from its rate. The baseline drains the same commands on a second fresh
site with nats-py: fetch, apply each command with `dataflows/room_worker/store_mongo.py`, publish its events one
after the other, publish the result, ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

from bench.cpu import per_10k, process_cpu_s
from bench.realistic_data import load
from bench.room_worker_paced import Paced, paced_latency
from bench.stores import Store, cpu_delta, store_servers
from connectors.jetstream import parse_ack_reply
from connectors.mongo import ensure_indexes, find_in
from dataflows.room_worker import commands as rc
from dataflows.room_worker import events as room_events
from dataflows.room_worker import plans as plans
from dataflows.room_worker.runner import mint_request_id, new_id
from dataflows.room_worker.store_mongo import RoomStore
from schemas import names, subjects
from schemas.carriers import Delivery
from schemas.commands import CreateRoom, encode_command
from testkit.room_harness import RoomHarness, user
from testkit.support import bootstrap_local_sites, connect_site

HOME_USERS = 100
REMOTE_USERS = 50
TS = 1767225600000


def _people(home: str, remote: str) -> list[dict[str, Any]]:
    return [user(f"h{i}", home) for i in range(HOME_USERS)] + [user(f"x{i}", remote) for i in range(REMOTE_USERS)]


def _create(i: int) -> dict[str, Any]:
    users = [f"h{(i + 1) % HOME_USERS}", f"x{i % REMOTE_USERS}"]
    return {"name": f"bench {i}", "users": users, "roomId": f"r-bench-{i}", "requesterAccount": f"h{i % HOME_USERS}", "timestamp": TS + i}


async def _prepare(servers: dict[str, Any], n: int, loaded: bool = False) -> RoomHarness:
    """A fresh site with its users and a backlog of `n` creates; no flow running."""
    h = RoomHarness(servers)
    h.nc = await connect_site(servers, "s1")
    await bootstrap_local_sites(h.nc, [h.site, h.other])
    ensure_indexes(h.db)
    if loaded:
        load(h.db, h.site)
    h.db.users.insert_many(_people(h.site, h.other))
    js = h.nc.jetstream()
    acks = [js.publish(subjects.rooms_command(h.site, "create"), json.dumps(_create(i)).encode(), headers={"X-Request-ID": str(uuid.uuid4())}) for i in range(n)]
    for start in range(0, n, 200):
        await asyncio.gather(*acks[start : start + 200])
    return h


def _check(h: RoomHarness, n: int) -> None:
    ids = [f"r-bench-{i}" for i in range(n)]  # by id, not by regex: FerretDB scans for a regex
    rooms = find_in(h.db.rooms, "_id", ids, projection={"userCount": 1})
    assert len(rooms) == n, "every room written"
    assert len(find_in(h.db.subscriptions, "roomId", ids, projection={"_id": 1})) == 3 * n, "every subscription written"
    assert all(r["userCount"] == 3 for r in rooms), "every room counted"


async def _events(h: RoomHarness) -> tuple[int, int]:
    js = h.client.jetstream()
    local = (await js.stream_info(names.inbox_stream(h.site))).state.messages
    outbox = (await js.stream_info(names.outbox_stream(h.site))).state.messages
    return local, outbox


async def _run_flow(h: RoomHarness, store: Store, **env: str) -> tuple[float, float, float, dict[str, float]]:
    """(start-up seconds, drain seconds after the first delivery, CPU seconds meanwhile of the flow process and the store's)."""
    js = h.client.jetstream()
    stream = names.rooms_stream(h.site)
    launched = time.perf_counter()
    h.start_flow(**env)
    while not (info := await js.consumer_info(stream, names.ROOM_WORKER_DURABLE)).delivered.consumer_seq and not (info.num_pending == 0 and info.num_waiting):
        assert h.flow is not None
        h.flow.assert_alive()
        await asyncio.sleep(0.01)
    first = time.perf_counter()
    assert h.flow is not None
    pid = h.flow.procs[0].pid
    cpu_before, store_before = process_cpu_s(pid), store.cpu()
    while True:
        info = await js.consumer_info(stream, names.ROOM_WORKER_DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    done = time.perf_counter()
    return first - launched, done - first, process_cpu_s(pid) - cpu_before, cpu_delta(store_before, store.cpu())


def _delivery(msg: Msg) -> Delivery:
    stream, seq, delivered = parse_ack_reply(msg.reply)
    headers = dict(msg.headers) if msg.headers else None
    return Delivery(subject=msg.subject, data=msg.data, reply=msg.reply, stream=stream, stream_seq=seq, num_delivered=delivered, headers=headers)


async def _run_baseline(h: RoomHarness, n: int) -> float:
    """The straightforward consumer: one command at a time, every call awaited before the next."""
    nc = h.client
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=names.ROOM_WORKER_DURABLE, stream=names.rooms_stream(h.site))
    store = RoomStore(h.db)
    done, started = 0, time.perf_counter()
    while done < n:
        for msg in await sub.fetch(100, timeout=5):
            command = rc.parse_command(_delivery(msg), site=h.site, mint_id=mint_request_id, now_ms=int(time.time() * 1000))
            assert isinstance(command, rc.Command) and isinstance(command.body, CreateRoom)
            body = command.body
            found = store.users_by_accounts([body.requester_account, *body.users])
            plan = plans.plan_create(
                body, home=h.site, requester=found[body.requester_account], found=found, org_members=store.org_members(body.orgs), new_id=new_id
            )
            assert isinstance(plan, plans.CreatePlan)
            # the runner's writes: a new room is inserted with its plan's counts, recounted only if it existed
            users, apps = plans.counts_after({}, plan.subscriptions)
            room, fresh = store.insert_room(msgspec.structs.replace(plan.room, user_count=users, app_count=apps, updated_at=int(time.time() * 1000)))
            inserted = store.insert_subscriptions(plan.subscriptions)
            store.insert_room_members(plan.room_members)
            if not fresh or inserted < len(plan.subscriptions):
                store.recount(room.id, int(time.time() * 1000))
            publishes = room_events.member_added_publishes(
                room=room, members=plan.members, requester_account=body.requester_account, joined_at=body.timestamp,
                history_shared_since=0, now_ms=int(time.time() * 1000), dedup_base=command.dedup_base,
            )
            for p in publishes:
                await js.publish(p.subject, p.data, headers={"Nats-Msg-Id": p.msg_id})
            result = rc.ok_result(command, room.id, int(time.time() * 1000))
            await nc.publish(subjects.command_result(account=body.requester_account, request_id=result.request_id), encode_command(result))
            await msg.ack()
            done += 1
    await nc.flush()
    return time.perf_counter() - started


@dataclass
class RoomRun:
    backend: str
    n: int
    loaded: bool
    flush_ms: int | None = None
    startup: float = 0.0
    flow_s: float = 0.0
    flow_cpu: float = 0.0
    store_cpu: dict[str, float] = field(default_factory=dict)
    base_s: float = 0.0
    base_cpu: float = 0.0
    paced: Paced | None = None
    load: float = 0.0

    @property
    def rate(self) -> float:
        return self.n / self.flow_s if self.flow_s else 0.0


async def run(store: Store, n: int, loaded: bool, paced: int, with_baseline: bool, flush_ms: int | None = None) -> RoomRun:
    """The backlog of `n` creates drained by the flow (and the baseline), then `paced` creates at 100/s.

    `flush_ms`: the flow's CHATFED_FLUSH_MS (how long a room's commands are gathered; default 100 ms).
    """
    servers = store.servers
    out = RoomRun(store.backend, n, loaded, flush_ms)
    flow_site = await _prepare(servers, n, loaded)
    base_site = await _prepare(servers, n, loaded) if with_baseline else None
    try:
        env = {} if flush_ms is None else {"CHATFED_FLUSH_MS": str(flush_ms)}
        out.startup, out.flow_s, out.flow_cpu, out.store_cpu = await _run_flow(flow_site, store, **env)
        _check(flow_site, n)
        assert await _events(flow_site) == (n, n), "one local and one OUTBOX event per create"
        out.load = os.getloadavg()[0]
        if paced:
            out.paced = await paced_latency(flow_site, store, [_create(i) for i in range(n, n + paced)], rate=100)
        if base_site is not None:
            cpu_before = time.process_time()
            out.base_s = await _run_baseline(base_site, n)
            out.base_cpu = time.process_time() - cpu_before
            _check(base_site, n)
            assert await _events(base_site) == (n, n), "one local and one OUTBOX event per create"
    finally:
        await flow_site.close()
        if base_site is not None:
            await base_site.close()
    return out


def report(r: RoomRun) -> str:
    data = "loaded (20k users, 5k rooms, 100k subscriptions)" if r.loaded else "empty"
    stores = " | ".join(f"{k} CPU-s per 10k" for k in r.store_cpu)
    flush = f"CHATFED_FLUSH_MS={r.flush_ms or 'default (100)'}"
    if not r.n:  # paced commands only
        return "\n".join([f"room_worker bench on FerretDB/{r.backend}, {data} collections, no backlog; {flush}", "", *([r.paced.table()] if r.paced else [])])
    lines = [
        f"room_worker bench on FerretDB/{r.backend}: {r.n} channel creates (3 members: 1 remote) on {data} collections, "
        f"backlog published before the consumer starts; {flush}",
        "",
        f"load average {r.load:.2f}; CPU: the consumer's own process, and the store's",
        "",
        f"| consumer | commands | seconds | commands/s | ratio to baseline | CPU-s per 10k | {stores} |",
        "|---|---|---|---|---|---|" + "---|" * len(r.store_cpu),
    ]
    if r.n:
        ratio = f"{r.rate / (r.n / r.base_s):.2f}x" if r.base_s else "-"
        cells = " | ".join(f"{per_10k(v, r.n):.1f}" for v in r.store_cpu.values())
        lines.append(
            f"| room_worker flow (1 process, 1 worker; start-up {r.startup:.2f} s excluded) | {r.n} | {r.flow_s:.2f} | {r.rate:,.1f} "
            f"| {ratio} | {per_10k(r.flow_cpu, r.n):.1f} | {cells} |"
        )
    if r.base_s:
        lines.append(f"| baseline: fetch + apply one at a time + publish + ack | {r.n} | {r.base_s:.2f} | {r.n / r.base_s:,.1f} | 1.00x | {per_10k(r.base_cpu, r.n):.1f} |")
    if r.paced:
        lines += ["", r.paced.table()]
    return "\n".join(lines)


async def main(n: int, loaded: bool, paced: int, with_baseline: bool, backend: str | None, flush_ms: int | None) -> None:
    with store_servers(backend) as store:
        print(report(await run(store, n, loaded, paced, with_baseline, flush_ms)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=500)
    parser.add_argument("--loaded", action="store_true")
    parser.add_argument("--paced", type=int, default=0, help="creates sent at 100/s after the backlog, for latency")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), help="a private NATS + FerretDB on this backend (default: the dev servers)")
    parser.add_argument("--flush-ms", type=int, help="the flow's CHATFED_FLUSH_MS (default: its own, 100)")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.loaded, args.paced, not args.no_baseline, args.backend, args.flush_ms))
