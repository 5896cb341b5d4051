"""A large room end to end (issue 12, items 3 and 6): command → every store of both sites, at N = 1k, 5k, 10k.

Run with the servers up: `.venv/bin/python -m bench.large_room [--sizes 1000,5000,10000] [--timeout 600]`.

Per N, a fresh two-site stack (testkit/stack.py: all six flows), users seeded on both sites (half homed on
each), then a 4-member warm-up channel (the stack's first command also creates collections: timed apart),
(a) a channel created with N members and (b) an org of N/2 members added to another channel.
From publishing the command, every store is counted until it holds the room's memberships: home and remote
subscriptions (MongoDB of each site), user-room entries and spotlight documents (Elasticsearch of each
site). Subscriptions are counted in FerretDB's PostgreSQL through the GIN index when that is the backend: FerretDB
reads every document it counts (~0.1 ms each), so polling its count of a 10k-member room every 0.2 s would be
much of the store's load. Reported: time to the result, to each store, to the last one; CPU-seconds of the six
flows, of FerretDB, of PostgreSQL and of Elasticsearch (shared with whatever else runs on the box); peak RSS of
each flow.
The summary compares time(N)/time(1k) and CPU(N)/CPU(1k) with N/1k (linear = equal).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import process_cpu_s
from bench.stores import Store, store_servers
from schemas import names
from schemas.names import FLOWS
from testkit.stack import Stack
from testkit.support import REPO

T0 = 1_767_225_600_000
STORES = ("subs", "user_room", "spotlight")


def _es_pid(store: Store) -> int | None:
    try:
        return int((store.run_dir / "es.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Phase:
    name: str
    n: int
    result_s: float = 0.0
    store_s: dict[str, float] = field(default_factory=dict)  # "site:store" → seconds to complete
    cpu: dict[str, float] = field(default_factory=dict)  # flows, ferretdb, es
    missing: dict[str, tuple[int, int]] = field(default_factory=dict)  # timed out: store → (count, expected)

    @property
    def last_s(self) -> float:
        return max(self.store_s.values(), default=float("nan"))


class Bench:
    def __init__(self, store: Store, timeout: float, profile: str = "") -> None:
        self.store = store
        self.servers = store.servers
        self.timeout = timeout
        self.profile = profile  # a directory: py-spy records every flow process into it (collapsed stacks)
        self.es_pid = _es_pid(store)
        self._tables: dict[str, str] = {}  # site -> FerretDB's PostgreSQL table of its subscriptions

    def _cpu(self, stack: Stack) -> dict[str, float]:
        cpu = {flow: sum(process_cpu_s(p.pid) for (_, f), proc in stack.flows.items() if f == flow for p in proc.procs) for flow in FLOWS}
        cpu["flows"] = sum(cpu[flow] for flow in FLOWS)
        cpu |= {"postgres": 0.0} | self.store.cpu()
        cpu["es"] = process_cpu_s(self.es_pid) if self.es_pid else float("nan")
        return cpu

    def _pg_count(self, site: str, room: str) -> int:
        """The room's subscriptions counted by PostgreSQL from the GIN twin of `roomId` (ids here are [a-z0-9-])."""
        schema = names.mongo_database(site)
        if site not in self._tables:
            found = self.store.psql(f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' AND tablename LIKE 'subscriptions\\_%';").split()
            if not found:
                return 0  # no subscription written yet
            self._tables[site] = found[0]
        sql = f"""SELECT count(*) FROM "{schema}"."{self._tables[site]}" WHERE _jsonb -> 'roomId' @> '"{room}"'::jsonb;"""
        return int(self.store.psql(sql).strip())

    def _count(self, stack: Stack, key: str, room: str) -> int:
        label, store = key.split(":")
        site = stack.sites[0] if label == "home" else stack.sites[1]
        if store == "subs":
            if self.store.backend == "postgresql":
                return self._pg_count(site, room)
            # another backend: the whole collection's count (cheaper than a filtered one on FerretDB/SQLite)
            return stack.db(site).subscriptions.estimated_document_count()
        index, fld = (names.user_room_alias(site), "rooms") if store == "user_room" else (names.spotlight_alias(site), "roomId")
        try:
            return int(stack.es.count(index=index, query={"term": {fld: room}})["count"])
        except Exception:  # noqa: BLE001 - index not created yet: nothing visible
            return 0

    async def _watch(self, stack: Stack, phase: Phase, key: str, room: str, want: int, start: float) -> None:
        """Count one store every 0.2 s (its own thread: a slow store delays no other) until it holds `want`."""
        count = 0
        while time.monotonic() - start < self.timeout:
            count = await asyncio.to_thread(self._count, stack, key, room)
            if count >= want:
                phase.store_s[key] = time.monotonic() - start
                return
            await asyncio.sleep(0.2)
        phase.missing[key] = (count, want)

    async def measure(self, stack: Stack, phase: Phase, room: str, expected: dict[str, int], op: str, body: dict[str, Any]) -> Phase:
        before = {}  # the collection's count less the room's own subscriptions (a count that scans, untimed)
        for key in expected:
            if key.endswith(":subs") and self.store.backend != "postgresql":
                site = stack.sites[0] if key.startswith("home") else stack.sites[1]
                before[key] = self._count(stack, key, room) - stack.db(site).subscriptions.count_documents({"roomId": room})
        expected = {key: want + before.get(key, 0) for key, want in expected.items()}
        cpu0 = self._cpu(stack)
        start = time.monotonic()
        call = asyncio.create_task(stack.call(stack.sites[0], op, body, requester=body.get("requesterAccount", ""), timeout=self.timeout))
        call.add_done_callback(lambda _: setattr(phase, "result_s", time.monotonic() - start))
        await asyncio.gather(*(self._watch(stack, phase, key, room, want, start) for key, want in expected.items()))
        answer = await call
        assert answer["status"] == "ok", answer
        phase.cpu = {k: v - cpu0[k] for k, v in self._cpu(stack).items()}
        for key in (k for k in expected if k.endswith(":subs")):  # and the room's own subscriptions through FerretDB, once (untimed)
            site = stack.sites[0] if key.startswith("home") else stack.sites[1]
            got, want = stack.db(site).subscriptions.count_documents({"roomId": room}), expected[key] - before.get(key, 0)
            if got != want:
                phase.missing[key] = (got, want)
        return phase

    async def run(self, n: int) -> tuple[list[Phase], dict[str, float]]:
        tag = uuid.uuid4().hex[:6]
        stack = Stack(self.servers)
        home, remote = stack.sites
        alice = f"alice-{tag}"
        people = [f"p{i}-{tag}" for i in range(n - 1)]
        org = [f"o{i}-{tag}" for i in range(n // 2)]
        site_of = {alice: home} | {a: (home if i % 2 else remote) for i, a in enumerate(people)}
        site_of |= {a: (home if i % 2 else remote) for i, a in enumerate(org)}
        phases: list[Phase] = []
        spies: list[subprocess.Popen[bytes]] = []
        try:
            await stack.open([(a, site_of[a]) for a in [alice, *people]])
            if self.profile:
                spies = self._spy(stack, n)
            for site in stack.sites:
                stack.db(site).users.insert_many([{"_id": f"u-{a}", "account": a, "siteId": site_of[a], "sectId": f"org-{tag}"} for a in org])

            def expected(members: list[str]) -> dict[str, int]:
                on_remote = sum(1 for a in members if site_of[a] == remote)
                return {f"{s}:{store}": (len(members) if s == "home" else on_remote) for s in ("home", "remote") for store in STORES}

            # the first command of a fresh stack also creates collections and warms every flow: timed on its own
            warm_room, warm_members = f"w-{tag}", people[:3]
            warm = {"name": f"warm-up {tag}", "users": warm_members, "roomId": warm_room, "requesterAccount": alice, "timestamp": T0}
            phases.append(await self.measure(stack, Phase("warm-up", len(warm_members) + 1), warm_room, expected([alice, *warm_members]), "create", warm))
            room = f"r-{tag}"
            create = {"name": f"company {tag}", "users": people, "roomId": room, "requesterAccount": alice, "timestamp": T0}
            phases.append(await self.measure(stack, Phase("channel", n), room, expected([alice, *people]), "create", create))
            org_room = f"o-{tag}"
            small = {"name": f"org {tag}", "users": [], "roomId": org_room, "requesterAccount": alice, "timestamp": T0 + 1}
            assert (await stack.call(home, "create", small, requester=alice))["status"] == "ok"
            add = {"roomId": org_room, "users": [], "orgs": [f"org-{tag}"], "history": {"mode": "all"}, "requesterAccount": alice, "timestamp": T0 + 2}
            phases.append(await self.measure(stack, Phase("org add", n // 2), org_room, expected([alice, *org]), "member.add", add))
            stack.assert_alive()
            rss = {f"{flow}@{'home' if site == home else 'remote'}": max(_peak_rss_mb(p.pid) for p in proc.procs) for (site, flow), proc in stack.flows.items()}
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            await stack.close()
        return phases, rss

    def _spy(self, stack: Stack, n: int) -> list[subprocess.Popen[bytes]]:
        os.makedirs(self.profile, exist_ok=True)
        spies = []
        for (site, flow), proc in stack.flows.items():
            label = "home" if site == stack.sites[0] else "remote"
            out = os.path.join(self.profile, f"{n}-{flow}@{label}.txt")
            args = [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--idle", "--pid", str(proc.procs[0].pid), "--rate", "50", "--format", "raw", "-o", out]
            spies.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return spies


def _cpu_all(phase: Phase) -> float:
    """The flows', FerretDB's, PostgreSQL's and Elasticsearch's CPU-seconds (each flow is also in "flows": once)."""
    return sum(phase.cpu[k] for k in ("flows", "ferretdb", "postgres", "es"))


def _fmt(x: float) -> str:
    return f"{x:8.2f}"


def report(results: dict[int, tuple[list[Phase], dict[str, float]]]) -> None:
    base_n = min(results)
    for n, (phases, rss) in results.items():
        print(f"\n=== N = {n}  (load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
        keys = [f"{s}:{store}" for s in ("home", "remote") for store in STORES]
        print(f"{'phase':10} {'members':>8} " + " ".join(f"{k.split(':')[1][:9] + '@' + k[0]:>12}" for k in keys)
              + f" {'result s':>8} {'last s':>8} {'cpu flows':>9} {'room_w':>6} {'inbox_m':>7} {'search_s':>8} {'cpu ferret':>10} {'cpu pg':>7} {'cpu es':>8}")
        for p in phases:
            cells = " ".join(f"{p.store_s[k]:12.2f}" if k in p.store_s else f"{'%d/%d' % p.missing[k]:>12}" for k in keys)
            print(f"{p.name:10} {p.n:8d} {cells} {_fmt(p.result_s)} {_fmt(p.last_s)} {p.cpu['flows']:9.2f} {p.cpu[names.ROOM_WORKER_FLOW]:6.2f} {p.cpu[names.INBOX_MIRROR_FLOW]:7.2f} {p.cpu[names.SEARCH_SYNC_FLOW]:8.2f} {p.cpu['ferretdb']:10.2f} {p.cpu['postgres']:7.2f} {p.cpu['es']:8.2f}")
        for p in phases:
            if p.missing:
                print(f"INCOMPLETE {p.name}: " + ", ".join(f"{k} {got}/{want}" for k, (got, want) in p.missing.items()))
        print("peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())))
    print(f"\n=== ratios against N = {base_n} (linear: equal to N/{base_n})")
    print(f"{'phase':10} {'N':>6} {'N ratio':>8} {'time':>8} {'time r':>7} {'cpu all':>8} {'cpu r':>6} {'flows r':>7} {'ferret r':>8} {'es r':>6} {'rss max':>8}")
    for name in ("channel", "org add"):
        base = next(p for p in results[base_n][0] if p.name == name)
        for n, (phases, rss) in results.items():
            p = next(x for x in phases if x.name == name)
            total, base_total = _cpu_all(p), _cpu_all(base)
            print(f"{name:10} {n:6d} {n / base_n:8.1f} {p.last_s:8.2f} {p.last_s / base.last_s:7.2f} {total:8.1f} {total / base_total:6.2f} "
                  f"{p.cpu['flows'] / base.cpu['flows']:7.2f} {p.cpu['ferretdb'] / base.cpu['ferretdb']:8.2f} {p.cpu['es'] / base.cpu['es']:6.2f} "
                  f"{max(rss.values()):8.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large_room", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="comma-separated member counts N (default 1000,5000,10000)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every store, per phase")
    parser.add_argument("--profile", default="", metavar="DIR", help="py-spy record every flow process into DIR (collapsed stacks)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        if not sizes or min(sizes) < 4:
            raise ValueError
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers >= 4, got {args.sizes!r}")
    with store_servers(None) as store:
        bench = Bench(store, args.timeout, args.profile)
        results = {}
        for n in sizes:
            results[n] = asyncio.run(bench.run(n))
            print(f"N = {n} done: " + ", ".join(f"{p.name} last {p.last_s:.2f}s" for p in results[n][0]), flush=True)
    report(results)


if __name__ == "__main__":
    main()
