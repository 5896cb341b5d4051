"""Events per second of inbox_mirror on a member_added backlog, beside a one-message-at-a-time baseline.

Usage: .venv/bin/python bench/inbox_mirror_backlog.py [events] [baseline_events]
The baseline is what the reference does: fetch, look the user up, upsert with $setOnInsert, ack, one message at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cpu import per_10k, process_cpu_s
from schemas import names
from testkit.mirror_site import add, mirror_site

ACCOUNTS = [f"user{i}" for i in range(50)]


def backlog(events: int, base_ms: int) -> list:
    """Channel adds of one account each, over distinct (room, account) pairs: the worst case for coalescing."""
    return [add(f"room{i // len(ACCOUNTS)}", [ACCOUNTS[i % len(ACCOUNTS)]], base_ms + i) for i in range(events)]


async def baseline(site, limit: int) -> float:
    js = site.js
    sub = await js.pull_subscribe_bind(durable=names.INBOX_WORKER_DURABLE, stream=names.inbox_stream(site.site))
    users, subs = site.db.users, site.db.subscriptions
    from schemas.envelope import decode_envelope
    from schemas.events import decode_member_added

    done, started = 0, time.perf_counter()
    while done < limit:
        for msg in await sub.fetch(100, timeout=5):
            event = decode_member_added(decode_envelope(msg.data).payload)
            for account in event.accounts:
                user = users.find_one({"account": account})
                doc = {"u": {"_id": user["_id"], "account": account}, "roomId": event.room_id, "name": event.room_name, "joinedAt": event.joined_at}
                subs.update_one({"roomId": event.room_id, "u.account": account}, {"$setOnInsert": doc}, upsert=True)
            await msg.ack()
            done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    base_events = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000
    servers = json.loads(subprocess.check_output([sys.executable, str(REPO / "scripts" / "services.py"), "info"]))
    base_ms = int(time.time() * 1000)
    with mirror_site(servers) as flow_site, mirror_site(servers) as base_site:
        for site, n in ((flow_site, events), (base_site, base_events)):
            site.users(ACCOUNTS)
            site.publish(backlog(n, base_ms))  # through the peer's OUTBOX, as in production
        flow = flow_site.flow().start()
        started = time.perf_counter()
        try:
            flow_site.drained(timeout=1800)
            elapsed = time.perf_counter() - started  # includes process start-up (~1 s)
            flow_cpu = process_cpu_s(flow.procs[0].pid)  # includes start-up (imports, connections)
        finally:
            flow.stop()
        assert flow_site.db.subscriptions.count_documents({}) == events
        cpu_before = time.process_time()
        rate_base = base_site.run(baseline(base_site, base_events))
        base_cpu = time.process_time() - cpu_before
        rate_flow = events / elapsed
        print(f"load average {os.getloadavg()[0]:.2f}; CPU: the consumer's own process (not FerretDB's)")
        print()
        print("| consumer | events | events/s | ratio to baseline | CPU-s per 10k | CPU ratio |")
        print("|---|---|---|---|---|---|")
        flow_10k, base_10k = per_10k(flow_cpu, events), per_10k(base_cpu, base_events)
        print(f"| inbox_mirror flow (includes ~1 s start-up) | {events} | {rate_flow:,.0f} | {rate_flow / rate_base:.1f}x | {flow_10k:.1f} | {flow_10k / base_10k:.2f}x |")
        print(f"| baseline: fetch + find user + upsert + ack, one at a time | {base_events} | {rate_base:,.0f} | 1.0x | {base_10k:.1f} | 1.00x |")


if __name__ == "__main__":
    main()
