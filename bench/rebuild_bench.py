"""Rebuild rate: documents per second for a site whose INBOX holds N member events (`python -m bench.rebuild_bench N`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from chatfed_cli.rebuild import rebuild_site
from testkit.clients import es_client, es_settings, nats_settings
from testkit.search_site import close_site, open_site, publishable, random_history
from testkit.support import REPO, flow_env


def main(events: int) -> None:
    servers = json.loads(subprocess.run([sys.executable, str(REPO / "scripts" / "services.py"), "info"], capture_output=True, text=True, check=True).stdout)
    es = es_client(servers)

    async def prepare():  # type: ignore[no-untyped-def]
        site = await open_site(servers, es)
        _, order = random_history(events, accounts=max(events // 20, 10), rooms=max(events // 50, 10), seed=5)
        site.start_flow()
        await site.publish(publishable(site.site, order))
        await site.drain(timeout=600)
        return site

    site = asyncio.run(prepare())
    try:
        started = time.monotonic()
        report = rebuild_site(
            site=site.site,
            nats_settings=nats_settings(servers, "s1"),
            elastic_settings=es_settings(servers),
            flow_env=flow_env(servers, site.site),
        )
        total = time.monotonic() - started
        print(f"| events replayed | documents | fill s | docs/s | whole rebuild s |\n|---|---|---|---|---|\n"
              f"| {report.events} | {report.documents} | {report.fill_seconds:.1f} | {report.docs_per_second:.0f} | {total:.1f} |")
    finally:
        async def close() -> None:
            from testkit.support import connect_site

            site.nc = await connect_site(servers, "s1")
            await close_site(site)

        asyncio.run(close())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
