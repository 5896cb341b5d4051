"""The commands of scripts/services.py: up, down, start, release, status, info, rotate-secrets, tls."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from schemas.names import mongo_database

from .credentials import MONGO_AUTH_DB, es_operator, es_search_sync, mongo_service, nats_credentials, rotate_all
from .layout import CONF, DATA, HOST, HUB, LEASES, ROOT, RUN, SECRETS, Layout, ServiceError, W
from .lifecycle import adopt, start, started_as_now, terminate, wait_for_leafnodes
from .pki import ca_file, cert_file, client_name, describe, ensure_pki, key_file, rotate_pki
from .processes import cmdline, own_processes, pid_alive, read_pid
from .servers import PG_DROP_USERS, all_servers, pg_url, postgres


def cmd_up(layout: Layout, lease: str | None) -> None:
    if lease:
        LEASES.mkdir(parents=True, exist_ok=True)
        (LEASES / lease).touch()
    ensure_pki(layout)
    for server in all_servers(layout):
        if server.external:
            print(f"{server.name:<{W}} external  {server.address}  (from ${server.external})")
            continue
        pid = server.pid() or adopt(server)
        if pid is not None:
            if not started_as_now(server):
                raise ServiceError(
                    f"{server.name}: running (pid {pid}) with another configuration than the environment "
                    "now asks for (sites, ports?); stop it first: ./run.sh services down"
                )
            print(f"{server.name:<{W}} running   pid {pid:<8} {server.address}")
            continue
        if lease:  # recorded before starting, so that a failed start is stopped too
            with (LEASES / "started").open("a") as f:
                f.write(server.name + "\n")
        t0 = time.monotonic()
        start(server)
        print(f"{server.name:<{W}} started   pid {server.pid()!s:<8} {server.address}  ({time.monotonic() - t0:.1f} s)")
    if layout.local_sites:
        wait_for_leafnodes(layout)


def cmd_start(layout: Layout, names: list[str]) -> None:
    """Start these servers if they are stopped, and nothing else (`up` would also start one stopped on purpose)."""
    servers = {s.name: s for s in all_servers(layout) if not s.external}
    unknown = set(names) - set(servers)
    if unknown:
        raise ServiceError(f"unknown or external server(s): {', '.join(sorted(unknown))}")
    ensure_pki(layout)
    for name in names:
        if servers[name].pid() is None:
            start(servers[name])
    if any(name.startswith("nats-") for name in names) and layout.local_sites:
        wait_for_leafnodes(layout)


def cmd_down(layout: Layout, names: list[str], purge: bool) -> None:
    """Stop this checkout's servers: by pid file, plus strays whose pid file was lost.

    Overrides and the current CHATFED_SITES do not limit what is stopped: a server this checkout
    started is stopped even if the environment no longer names it.
    """
    servers = {s.name: s for s in all_servers(layout)}
    pg = postgres(layout)  # also when started under another CHATFED_MONGO_BACKEND
    markers = {name: s.marker for name, s in servers.items()} | {pg.name: pg.marker}
    for pid_file in RUN.glob("nats-*.pid"):  # sites no longer in CHATFED_SITES
        markers.setdefault(pid_file.stem, str(CONF / f"{pid_file.stem}.conf"))
    if names:
        unknown = set(names) - set(markers)
        if unknown:
            raise ServiceError(f"unknown server(s): {', '.join(sorted(unknown))}")
        markers = {n: m for n, m in markers.items() if n in names}
        victims = {}
    else:
        victims = own_processes({**markers, "nats": str(CONF / "nats-")})
        for pid, name in victims.items():
            if name == "nats":  # a stray NATS server: name it after its config file
                conf = re.search(rf"{re.escape(str(CONF))}/(nats-\S+)\.conf", cmdline(pid))
                victims[pid] = name = conf.group(1) if conf else name
                markers.setdefault(name, str(CONF / "nats-"))
    for name in markers:
        extra = [RUN / "es" / "jvm.pid"] if name == "es" else []
        for pid in filter(None, map(read_pid, [RUN / f"{name}.pid", *extra])):
            if pid_alive(pid, markers[name]):
                victims[pid] = name
    terminate(victims, markers, {name: s.stop_signal for name, s in {**servers, pg.name: pg}.items()})
    for name in markers:
        for f in (RUN / f"{name}.pid", RUN / f"{name}.started-with"):
            f.unlink(missing_ok=True)
        stopped = sorted(p for p, n in victims.items() if n == name)
        if stopped or name in servers:
            print(f"{name:<{W}} " + (f"stopped   pid {' '.join(map(str, stopped))}" if stopped else "not running"))
    if purge:
        shutil.rmtree(DATA, ignore_errors=True)
        print(f"{'purged':<{W}} {DATA.relative_to(ROOT)}")


def cmd_release(layout: Layout, lease: str) -> None:
    """Drop a lease; when no live lease is left, stop the servers that leased runs started."""
    (LEASES / lease).unlink(missing_ok=True)
    leases = list(LEASES.glob("[0-9]*"))
    for f in leases:
        if not Path(f"/proc/{f.name}").exists():
            f.unlink()  # that run died without releasing
    started = LEASES / "started"
    if any(f.exists() for f in leases) or not started.exists():
        return
    names = sorted(set(started.read_text().split()))
    if names:
        cmd_down(layout, names, purge=False)
    started.unlink()


def cmd_status(layout: Layout) -> int:
    servers = all_servers(layout)
    running = 0
    for server in servers:
        if server.external:
            print(f"{server.name:<{W}} external  {'':<12} {server.address}  (from ${server.external})")
            running += 1
            continue
        pid = server.pid()
        running += pid is not None
        state = f"running   pid {pid:<8}" if pid else f"stopped   {'':<12}"
        note = "" if not pid or started_as_now(server) else "  (started with another configuration: down, then up)"
        print(f"{server.name:<{W}} {state} {server.address}{note}")
    return 0 if running == len(servers) else 3


def site_info(layout: Layout, site: str) -> dict[str, str]:
    """How to reach a site: NATS as its operator (nats_user) or service user, with the site's client certificate
    (tls_cert, tls_key), its database and domain, and its search_sync user on Elasticsearch (es_service_user).

    A site whose NATS is external (CHATFED_NATS_URL_<SITE>) gets empty credentials: we do not manage them; likewise
    the search_sync user of an external Elasticsearch (its flows use es_user).
    """
    info = {"nats_url": layout.nats_url(site)}
    if site in layout.local_sites:
        creds = nats_credentials(site)
        operator, service = creds["operator"], creds["service"]
        tls = {"tls_cert": str(cert_file(client_name(site))), "tls_key": str(key_file(client_name(site)))}
    else:
        operator = service = {"user": "", "password": ""}
        tls = {"tls_cert": "", "tls_key": ""}
    info.update(
        nats_user=operator["user"],
        nats_password=operator["password"],
        service_user=service["user"],
        service_password=service["password"],
        **tls,
        mongo_db=mongo_database(site),
        domain=site,
    )
    search_sync = es_search_sync(site) if "es" not in layout.overrides else {"user": "", "password": ""}
    info.update(es_service_user=search_sync["user"], es_service_password=search_sync["password"])
    return info


def mongo_info(layout: Layout) -> dict[str, str]:
    """FerretDB's user; for an external MongoDB (CHATFED_MONGO_URI), what CHATFED_MONGO_USER, CHATFED_MONGO_PASSWORD and
    CHATFED_MONGO_TLS_CA_FILE say (the URI may carry any other option: authSource, tls, tlsCertificateKeyFile, ...)."""
    if "ferretdb" in layout.overrides:
        env = os.environ
        return {
            "mongo_user": env.get("CHATFED_MONGO_USER", ""),
            "mongo_password": env.get("CHATFED_MONGO_PASSWORD", ""),
            "mongo_tls_ca": env.get("CHATFED_MONGO_TLS_CA_FILE", ""),
        }
    user = mongo_service()
    return {"mongo_user": user["user"], "mongo_password": user["password"], "mongo_tls_ca": ""}


def es_info(layout: Layout) -> dict[str, str]:
    """Elasticsearch as its operator (the CLI's user) and the CA its certificate chains to; for an external one
    (CHATFED_ES_URL), what CHATFED_ES_USER, CHATFED_ES_PASSWORD and CHATFED_ES_CA_CERTS say."""
    if "es" in layout.overrides:
        env = os.environ
        return {"es_user": env.get("CHATFED_ES_USER", ""), "es_password": env.get("CHATFED_ES_PASSWORD", ""), "es_ca": env.get("CHATFED_ES_CA_CERTS", "")}
    operator = es_operator()
    return {"es_user": operator["user"], "es_password": operator["password"], "es_ca": str(ca_file())}


def cmd_info(layout: Layout) -> int:
    """Where everything is, as JSON; `tls_ca` is the CA every local server's certificate chains to."""
    sites = {s: site_info(layout, s) for s in layout.sites}
    backend = "external" if "ferretdb" in layout.overrides else layout.mongo_backend
    store = {"postgres_url": pg_url(layout)} if backend == "postgresql" else {}  # for psql (benches)
    info: dict[str, object] = {
        "sites": sites,
        "tls_ca": str(ca_file()),
        "mongo_uri": layout.mongo_uri,
        **mongo_info(layout),
        "mongo_backend": backend,
        **store,
        "es_url": layout.es_url,
        **es_info(layout),
    }
    if layout.local_sites:  # where the hub listens (the TLS tests knock on every port)
        info["hub"] = {
            "nats_url": f"tls://{HOST}:{layout.port_base}",
            "leafnode_url": f"tls://{HOST}:{layout.hub_leaf_port}",
            "monitor_url": f"https://{HOST}:{layout.hub_monitor_port}",
        }
    print(json.dumps(info))
    return 0


def cmd_tls(layout: Layout) -> None:
    """Create the CA and the certificates if missing (install runs this); silent when there is nothing to do."""
    ensure_pki(layout)


def cmd_rotate_secrets(layout: Layout) -> None:
    """Replace every password, the CA and every certificate of this checkout; the servers must be down (they read
    them at start)."""
    running = [s.name for s in all_servers(layout) if not s.external and s.pid()]
    strays = own_processes({"nats": str(CONF / "nats-")})
    if running or strays:
        names = ", ".join(running) or "nats-server processes of this checkout"
        raise ServiceError(f"{names} running: stop them first (./run.sh services down), then rotate, then up")
    rotate_all()  # also those of sites no longer in CHATFED_SITES
    for server in (HUB, *layout.local_sites):
        nats_credentials(server)
    es_operator()
    for site in layout.sites:
        es_search_sync(site)
    mongo_service()
    for old_users in (DATA / "ferretdb" / "sqlite").glob(f"{MONGO_AUTH_DB}.sqlite*"):  # its next start creates the user anew
        old_users.unlink()
    if (DATA / "postgres" / "PG_VERSION").exists():  # on PostgreSQL that database is a schema: dropped at its next start
        PG_DROP_USERS.touch()
    print(f"{'secrets':<{W}} new passwords in {SECRETS.relative_to(ROOT)}/; clients need the new ones (services info)")
    if rotate_pki():
        ensure_pki(layout)
        print(f"{'tls':<{W}} new CA and certificates in {describe()}/; clients need the new CA (services info: tls_ca)")
    else:
        print(f"{'tls':<{W}} your own certificates (CHATFED_PKI_DIR) are left as they are: renew them in your PKI")
