#!/usr/bin/env python3
"""Start, stop and describe chatfed's local servers: a NATS hub, one JetStream NATS per site, ES, FerretDB.

Usage: services.py up [--lease PID] | down [--purge] [NAME...] | status | info | release PID | rotate-secrets
  `up --lease` and `release` serve ./run.sh test: the last run to release stops what the runs started.
  `status` exits 3 when a server is not running. `info` includes each site's NATS operator and service
  credentials. `rotate-secrets` replaces the NATS passwords (NATS servers down).

Everything lives under the git-ignored .local/: data/<server>, logs/<server>.log, run/<server>.pid,
conf/<server>.conf, secrets/nats-<site|hub>.json (NATS users and passwords, 0600, generated at the
first up). Standard library only. Environment:
  CHATFED_SITES          space-separated site ids (default "s1 s2")
  CHATFED_PORT_BASE      NATS: hub base+0, hub leafnodes base+1, hub monitor base+2,
                         site i client base+10+i, site i monitor base+30+i (default 14220)
  CHATFED_ES_PORT        Elasticsearch http port (default 19200; transport port +100)
  CHATFED_FERRET_PORT    FerretDB port (default 37017; debug port +1)
  CHATFED_MONGO_URI (or MONGO_URI), CHATFED_ES_URL, CHATFED_NATS_URL_<SITE>
                         use an existing server instead of starting one
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
DATA, LOGS, RUN, CONF, SECRETS = (LOCAL / d for d in ("data", "logs", "run", "conf", "secrets"))
LEASES = RUN / "leases"
HOST = "127.0.0.1"

ES_VERSION = "8.19.21"
ES_HOME = LOCAL / "opt" / f"elasticsearch-{ES_VERSION}"
ES_USER = "chatfed-es"
ES_JAVA_HOMES = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/temurin-25-jdk-amd64")
FERRET_BIN = LOCAL / "bin" / "ferretdb"
SITE_RE = re.compile(r"[a-z0-9-]+")
MAX_SITES = 20  # site client ports base+10.. and monitor ports base+30.. must not overlap
STOP_WAIT_S = 30.0
W = 12  # width of the name column in printed lines


class ServiceError(Exception):
    """A server could not be configured, started or stopped."""


# --------------------------------------------------------------------------- layout (from env)


@dataclass(frozen=True)
class Layout:
    """Sites, ports and external-server overrides, read once from the environment."""

    sites: tuple[str, ...]
    port_base: int
    es_port: int
    ferret_port: int
    overrides: dict[str, tuple[str, str]] = field(default_factory=dict)  # server -> (env var, url)

    @property
    def hub_leaf_port(self) -> int:
        return self.port_base + 1

    @property
    def hub_monitor_port(self) -> int:
        return self.port_base + 2

    def site_port(self, site: str) -> int:
        return self.port_base + 10 + self.sites.index(site)

    def site_monitor_port(self, site: str) -> int:
        return self.port_base + 30 + self.sites.index(site)

    def url(self, server: str, default: str) -> str:
        return self.overrides[server][1] if server in self.overrides else default

    def nats_url(self, site: str) -> str:
        return self.url(f"nats-{site}", f"nats://{HOST}:{self.site_port(site)}")

    @property
    def local_sites(self) -> list[str]:
        return [s for s in self.sites if f"nats-{s}" not in self.overrides]

    @property
    def mongo_uri(self) -> str:
        return self.url("ferretdb", f"mongodb://{HOST}:{self.ferret_port}/")

    @property
    def es_url(self) -> str:
        return self.url("es", f"http://{HOST}:{self.es_port}")


def _port(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 1024 <= int(raw) <= 65000:
        raise ServiceError(f"{name}={raw!r}: expected a port number between 1024 and 65000")
    return int(raw)


def load_layout(env: dict[str, str]) -> Layout:
    sites = tuple(env.get("CHATFED_SITES", "").split() or ("s1", "s2"))
    for site in sites:
        if not SITE_RE.fullmatch(site) or site == "hub":
            raise ServiceError(f"CHATFED_SITES: bad site id {site!r} (lowercase letters, digits, '-'; not 'hub')")
    if len(set(sites)) != len(sites) or len(sites) > MAX_SITES:
        raise ServiceError(f"CHATFED_SITES={' '.join(sites)!r}: ids must be unique, at most {MAX_SITES}")
    candidates = {
        "ferretdb": ("CHATFED_MONGO_URI", "MONGO_URI"),
        "es": ("CHATFED_ES_URL",),
        **{f"nats-{s}": ("CHATFED_NATS_URL_" + s.upper().replace("-", "_"),) for s in sites},
    }
    overrides = {}
    for server, names in candidates.items():
        var = next((n for n in names if env.get(n)), None)
        if var:
            overrides[server] = (var, env[var])
    return Layout(
        sites=sites,
        port_base=_port(env, "CHATFED_PORT_BASE", 14220),
        es_port=_port(env, "CHATFED_ES_PORT", 19200),
        ferret_port=_port(env, "CHATFED_FERRET_PORT", 37017),
        overrides=overrides,
    )


# --------------------------------------------------------------------------- NATS credentials

# Per-site passwords live in SECRETS/nats-<site>.json, the hub's in SECRETS/nats-hub.json: generated at
# the first `up` (or `info`), 0600, reused afterwards; `rotate-secrets` replaces them (servers down).
SITE_ROLES = ("operator", "service", "leaf")
HUB_ROLES = ("admin",)


def secrets_file(server: str) -> Path:
    """`server` is a site id or "hub"."""
    return SECRETS / f"nats-{server}.json"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a leftover tmp file
    os.replace(tmp, path)


def _new_credentials(server: str) -> dict[str, dict[str, str]]:
    roles = HUB_ROLES if server == "hub" else SITE_ROLES
    return {role: {"user": f"{server}-{role}", "password": secrets.token_urlsafe(24)} for role in roles}


def nats_credentials(server: str) -> dict[str, dict[str, str]]:
    """{role: {user, password}} of a site ("operator", "service", "leaf") or of the hub ("admin").

    Created on first use. Concurrent callers agree: the file is published with a hard link, which
    fails if another process got there first, and then everyone reads the winner's file.
    """
    path = secrets_file(server)
    if not path.exists():
        SECRETS.mkdir(parents=True, exist_ok=True)
        SECRETS.chmod(0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        write_private(tmp, json.dumps(_new_credentials(server), indent=1) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        creds = json.loads(path.read_text())
        roles = HUB_ROLES if server == "hub" else SITE_ROLES
        if all(creds[r]["user"] and creds[r]["password"] for r in roles):
            return {r: {"user": str(creds[r]["user"]), "password": str(creds[r]["password"])} for r in roles}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise ServiceError(f"{path.relative_to(ROOT)}: unreadable or incomplete; delete it (servers down) to regenerate")


# --------------------------------------------------------------------------- NATS configuration

# Subject layout of a site (schemas/subjects.py, schemas/streams.py; services.py stays stdlib only).
# INBOX_{dest} sources OUTBOX_{origin} through $JS.{origin}.API, delivering on DELIVER_PREFIX.{origin}.to.{dest}.
DELIVER_PREFIX = "fed.deliver"
SYSTEM_ACCOUNT = "SYS"
HUB_ACCOUNT = "FED"


def nats_service_permissions(site: str) -> dict[str, dict[str, list[str]]]:
    """What a site's dataflows (and a site-local API) may do: nothing outside the site's own streams.

    Publish: room commands, the INBOX *local* lane (the aggregate lane is written only by sourcing),
    OUTBOX and DLQ; pull requests on the two worked streams and their durables' info; acks of their deliveries; results to
    requesters. Subscribe: reply inboxes (pull deliveries, publish acks).
    """
    worked = (f"ROOMS_{site}", f"INBOX_{site}")
    return {
        "publish": {
            "allow": [
                f"chat.room.canonical.{site}.>",
                f"chat.inbox.{site}.*",
                f"outbox.{site}.>",
                f"chat.dlq.{site}.>",
                *(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*" for stream in worked),
                # a flow checks its durable's delivery contract at start (read-only)
                *(f"$JS.API.CONSUMER.INFO.{stream}.*" for stream in worked),
                # ack subjects: $JS.ACK.<stream>.… and the domain form $JS.ACK.<domain>.<account hash>.<stream>.…
                *(f"$JS.ACK.{stream}.>" for stream in worked),
                *(f"$JS.ACK.{site}.*.{stream}.>" for stream in worked),
                "chat.user.*.response.*",
                "_INBOX.release.>",  # a flow process tells the one that pulled a message it was settled
            ]
        },
        "subscribe": {"allow": ["_INBOX.>"]},
    }


def nats_leaf_permissions(layout: Layout, site: str) -> dict[str, dict[str, list[str]]]:
    """Hub-side permissions of `site`'s leafnode connection: only what JetStream sourcing needs.

    On a leafnode, `publish` is what the site may send into the hub and `subscribe` what the hub may
    send to the site; the hub enforces both and also hands them to the site, which applies them
    locally. For each other site `o`, `site` may:
      - ask o's JetStream (through $JS.{o}.API) to create a source consumer on OUTBOX_{o} filtered to
        `outbox.{o}.to.{site}.>`: the filter is part of the create subject and the server rejects a
        request whose body asks for another one;
      - read the info of consumers on OUTBOX_{o}. Sourcing does not need it, but the hub propagates a
        site's `$JS.{o}.API.CONSUMER.>` interest only if some allowed subject lies under it that its
        reverse matcher can find, and it does not find entries with a `*` in the middle (nats-server
        2.15, Sublist.ReverseMatch), like the create subject above;
      - answer the flow-control requests of those consumers ($JS.FC.OUTBOX_{o}.…, two forms);
      - deliver its own OUTBOX to o on DELIVER_PREFIX.{site}.to.{o}.… (messages, heartbeats and
        flow-control requests of o's source consumer) and answer o's API requests ($JSC.R.…);
    and receive the same from the others. Nothing else crosses: room commands, INBOX/OUTBOX/DLQ
    subjects, stream management, pulls, acks, consumer deletion, _INBOX, $SYS.
    """
    others = [o for o in layout.local_sites if o != site]

    def api(origin: str, dest: str) -> list[str]:
        return [
            f"$JS.{origin}.API.CONSUMER.CREATE.OUTBOX_{origin}.*.outbox.{origin}.to.{dest}.>",
            f"$JS.{origin}.API.CONSUMER.INFO.OUTBOX_{origin}.*",
        ]

    def flow_control(origin: str) -> list[str]:
        return [f"$JS.FC.OUTBOX_{origin}.>", f"$JS.FC.{origin}.*.OUTBOX_{origin}.>"]

    send, receive = [], []
    for o in others:
        send += [*api(o, site), *flow_control(o), f"{DELIVER_PREFIX}.{site}.to.{o}.>"]
        receive += [*api(site, o), f"{DELIVER_PREFIX}.{o}.to.{site}.>"]
    if others:
        receive += flow_control(site)
    common = ["$JSC.R.*"]  # replies to JetStream's internal API requests ($LDS. loop detection is exempt)
    return {"publish": {"allow": sorted(set(send)) + common}, "subscribe": {"allow": sorted(set(receive)) + common}}


def _conf_value(value: object, *, indent: int | None = 2) -> str:
    """A NATS config value: JSON is valid NATS config syntax (strings quoted, so `$JS…` is no variable)."""
    return json.dumps(value, indent=indent)


def nats_accounts_block(layout: Layout, server: str) -> str:
    """Accounts and users of one NATS server: `server` is a site id or "hub".

    A site server has one account named after the site (JetStream, domain = site) with the site's
    operator (everything within the account) and service user (nats_service_permissions), plus the
    system account. The hub has the account the sites' leafnodes bind to (no JetStream), whose only
    users are the sites' leaf users with nats_leaf_permissions (a leafnode authenticated by a regular
    user gets that user's account and permissions; a `leafnodes { authorization }` user cannot carry
    permissions), and the system account with an admin user.
    """
    if server == "hub":
        leaf_users = []
        for site in layout.local_sites:
            leaf = nats_credentials(site)["leaf"]
            leaf_users.append({**leaf, "permissions": nats_leaf_permissions(layout, site)})
        accounts: dict[str, object] = {
            HUB_ACCOUNT: {"users": leaf_users},
            SYSTEM_ACCOUNT: {"users": [nats_credentials("hub")["admin"]]},
        }
    else:
        creds = nats_credentials(server)
        service = {**creds["service"], "permissions": nats_service_permissions(server)}
        accounts = {
            server: {"jetstream": "enabled", "users": [creds["operator"], service]},
            SYSTEM_ACCOUNT: {},
        }
    return f"accounts: {_conf_value(accounts)}\nsystem_account: {SYSTEM_ACCOUNT}\n"


def nats_leaf_remote(layout: Layout, site: str) -> str:
    """The leafnode `remotes` entry with which a site server joins the hub, as the site's leaf user."""
    leaf = nats_credentials(site)["leaf"]
    url = f"nats-leaf://{leaf['user']}:{leaf['password']}@{HOST}:{layout.hub_leaf_port}"
    return _conf_value({"url": url, "account": site}, indent=None)


def nats_hub_conf(layout: Layout) -> str:
    # No JetStream on the hub: it only relays $JS.<domain>.API between the sites' domains (FINDINGS).
    return f"""# generated by scripts/services.py: do not edit (holds passwords: 0600)
server_name: hub
listen: {HOST}:{layout.port_base}
http: {HOST}:{layout.hub_monitor_port}
leafnodes {{
  listen: {HOST}:{layout.hub_leaf_port}
}}
{nats_accounts_block(layout, "hub")}"""


def nats_site_conf(layout: Layout, site: str) -> str:
    return f"""# generated by scripts/services.py: do not edit (holds passwords: 0600)
server_name: {site}
listen: {HOST}:{layout.site_port(site)}
http: {HOST}:{layout.site_monitor_port(site)}
jetstream {{
  domain: {site}
  store_dir: {json.dumps(str(DATA / f"nats-{site}"))}
  max_memory_store: 256MB
  max_file_store: 2GB
}}
leafnodes {{
  remotes [
    {nats_leaf_remote(layout, site)}
  ]
}}
{nats_accounts_block(layout, site)}"""


# --------------------------------------------------------------------------- probes and processes


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our loopback servers)
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError):
        return 0, ""


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int, marker: str) -> bool:
    """True when pid is a live (non-zombie) process whose command line contains marker."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline(pid)


def own_processes(markers: dict[str, str]) -> dict[int, str]:
    """Live processes whose command line holds one of this checkout's markers, as pid -> server name."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for name, marker in markers.items():
                if pid_alive(int(entry.name), marker):
                    found[int(entry.name)] = name
    return found


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in text)


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One local server process: how to start it, how to tell it is ready, where its files are."""

    name: str
    address: str  # what clients connect to, for status lines
    port: int  # must be free before start
    marker: str  # unique to this checkout, found in the process's command line
    argv: Callable[[], list[str]]
    ready: Callable[[], bool]
    config: Callable[[], str] = lambda: ""  # text of its generated config file, if any
    prepare: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this user (needs root)
    cwd: Path = ROOT
    daemon_pid_file: Path | None = None  # the command daemonises and writes the real pid here
    ready_timeout: float = 60.0
    external: str | None = None  # env variable that points at an existing server instead
    extra_logs: tuple[Path, ...] = ()

    @property
    def pid_file(self) -> Path:
        return RUN / f"{self.name}.pid"

    @property
    def fingerprint_file(self) -> Path:
        return RUN / f"{self.name}.started-with"

    @property
    def log_file(self) -> Path:
        return LOGS / f"{self.name}.log"

    def fingerprint(self) -> str:
        """What the server would be started with now, to compare with what the running one got."""
        return json.dumps({"argv": self.argv(), "config": self.config()}, indent=1)

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid, self.marker) else None

    def failure(self, what: str) -> ServiceError:
        logs = ", ".join(str(p.relative_to(ROOT)) for p in (self.log_file, *self.extra_logs))
        return ServiceError(f"{self.name}: {what}; see {logs}\n{log_tail(self.log_file)}")


def nats_bin() -> str:
    found = ROOT / ".venv" / "bin" / "nats-server"
    if not found.exists():
        raise ServiceError(f"{found.relative_to(ROOT)} missing: run ./run.sh install")
    return str(found)


def nats_hub(layout: Layout) -> Server:
    conf = CONF / "nats-hub.conf"
    return Server(
        name="nats-hub",
        address=f"nats://{HOST}:{layout.port_base} (leafnodes :{layout.hub_leaf_port})",
        port=layout.port_base,
        marker=str(conf),
        argv=lambda: [nats_bin(), "-c", str(conf)],
        config=lambda: nats_hub_conf(layout),
        prepare=lambda: write_private(conf, nats_hub_conf(layout)),
        ready=lambda: http_get(f"http://{HOST}:{layout.hub_monitor_port}/healthz")[0] == 200,
    )


def nats_site(layout: Layout, site: str) -> Server:
    conf = CONF / f"nats-{site}.conf"

    def prepare() -> None:
        (DATA / f"nats-{site}").mkdir(parents=True, exist_ok=True)
        write_private(conf, nats_site_conf(layout, site))

    health = f"http://{HOST}:{layout.site_monitor_port(site)}/healthz?js-enabled-only=true"
    return Server(
        name=f"nats-{site}",
        address=f"{layout.nats_url(site)} (domain {site})",
        port=layout.site_port(site),
        marker=str(conf),
        argv=lambda: [nats_bin(), "-c", str(conf)],
        config=lambda: nats_site_conf(layout, site),
        prepare=prepare,
        ready=lambda: http_get(health)[0] == 200,
    )


def es_java_home() -> str:
    for home in (os.environ.get("ES_JAVA_HOME"), *ES_JAVA_HOMES):
        if home and Path(home, "bin", "java").exists():
            return home
    raise ServiceError(f"no JDK for Elasticsearch: set ES_JAVA_HOME (looked in {', '.join(ES_JAVA_HOMES)})")


def es(layout: Layout) -> Server:
    data, logs, run = DATA / "es", LOGS / "es", RUN / "es"
    as_root = os.geteuid() == 0

    def prepare() -> None:
        if not (ES_HOME / "bin" / "elasticsearch").exists():
            raise ServiceError(f"{ES_HOME.relative_to(ROOT)} missing: run ./run.sh install")
        for d in (data, logs, run / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (run / "jvm.pid").unlink(missing_ok=True)
        if as_root:  # ES refuses root: ES_USER runs it and needs its own dirs and a path to them
            try:
                uid = pwd.getpwnam(ES_USER).pw_uid
            except KeyError:
                raise ServiceError(f"user {ES_USER} missing: run ./run.sh install") from None
            if (ES_HOME / "config").stat().st_uid != uid:
                raise ServiceError(f"{ES_HOME.relative_to(ROOT)} not owned by {ES_USER}: run ./run.sh install")
            for d in (data, logs, run, run / "tmp"):
                shutil.chown(d, ES_USER, ES_USER)
            for parent in (*reversed(LOCAL.parents), LOCAL, LOCAL / "opt", DATA, LOGS, RUN):
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(mode | stat.S_IXOTH)

    settings = {
        "network.host": HOST,
        "http.port": layout.es_port,
        "transport.port": layout.es_port + 100,
        "discovery.type": "single-node",
        "path.data": data,
        "path.logs": logs,
        "xpack.security.enabled": "false",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "action.destructive_requires_name": "false",
    }
    flags = [arg for k, v in settings.items() for arg in ("-E", f"{k}={v}")]
    health = f"{layout.es_url}/_cluster/health?wait_for_status=yellow&timeout=5s"
    return Server(
        name="es",
        address=layout.es_url,
        port=layout.es_port,
        marker=f"-Des.path.home={ES_HOME}",
        argv=lambda: [str(ES_HOME / "bin" / "elasticsearch"), *flags, "-d", "-p", str(run / "jvm.pid")],
        prepare=prepare,
        ready=lambda: http_get(health, timeout=10)[0] == 200,
        env={"ES_JAVA_OPTS": "-Xms1g -Xmx1g", "ES_TMPDIR": str(run / "tmp"), "HOME": str(run)},
        user=ES_USER if as_root else None,
        cwd=ES_HOME,
        daemon_pid_file=run / "jvm.pid",
        ready_timeout=180.0,
        extra_logs=(logs / "elasticsearch.log",),
    )


def ferretdb(layout: Layout) -> Server:
    data = DATA / "ferretdb"

    def prepare() -> None:
        if not FERRET_BIN.exists():
            raise ServiceError(f"{FERRET_BIN.relative_to(ROOT)} missing: run ./run.sh install")
        for d in (data / "sqlite", data / "state"):
            d.mkdir(parents=True, exist_ok=True)

    port = layout.ferret_port
    argv = [
        str(FERRET_BIN),
        "--handler=sqlite",
        f"--sqlite-url=file:{data / 'sqlite'}/",
        f"--listen-addr={HOST}:{port}",
        f"--debug-addr={HOST}:{port + 1}",
        "--telemetry=disable",
        f"--state-dir={data / 'state'}",
        "--log-level=WARN",
    ]
    return Server(
        name="ferretdb",
        address=layout.mongo_uri,
        port=port,
        marker=f"--state-dir={data / 'state'}",
        argv=lambda: argv,
        prepare=prepare,
        ready=lambda: tcp_open(HOST, port),  # stdlib only: no MongoDB ping
    )


def all_servers(layout: Layout) -> list[Server]:
    """Every server, in start order (the hub before the sites that connect to it)."""
    hub = [nats_hub(layout)] if layout.local_sites else []
    servers = [*hub, *(nats_site(layout, s) for s in layout.sites), ferretdb(layout), es(layout)]
    for server in servers:
        server.external = layout.overrides.get(server.name, (None, ""))[0]
    return servers


# --------------------------------------------------------------------------- up


def start(server: Server) -> None:
    """Start one server and wait until it is ready; raises ServiceError pointing at its log."""
    if tcp_open(HOST, server.port, timeout=0.3):
        raise ServiceError(
            f"{server.name}: port {server.port} is in use by a process this checkout did not start; "
            "stop it or move the ports (CHATFED_PORT_BASE, CHATFED_ES_PORT, CHATFED_FERRET_PORT)"
        )
    for d in (CONF, LOGS, RUN):
        d.mkdir(parents=True, exist_ok=True)
    server.prepare()
    server.pid_file.unlink(missing_ok=True)
    write_private(server.fingerprint_file, server.fingerprint())  # holds the config: passwords
    env = {**os.environ, **server.env}
    if server.name == "es":
        env["ES_JAVA_HOME"] = es_java_home()
        env.pop("JAVA_HOME", None)
    as_user = {"user": server.user, "group": server.user, "extra_groups": []} if server.user else {}
    with server.log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {server.name}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 (our own argv)
            server.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in our process group: ^C on run.sh leaves it to `down`
            env=env,
            cwd=server.cwd,
            **as_user,  # type: ignore[arg-type]
        )
    deadline = time.monotonic() + server.ready_timeout
    if server.daemon_pid_file:
        # `elasticsearch -d` returns once the node has started (or failed), leaving the JVM's pid behind
        try:
            code = proc.wait(timeout=server.ready_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        pid = read_pid(server.daemon_pid_file)
        if code != 0 or pid is None:
            raise server.failure(f"launcher exited with {code} and no running process")
        exited: Callable[[], bool] = lambda: not pid_alive(pid, server.marker)  # noqa: E731
    else:
        pid = proc.pid
        exited = lambda: proc.poll() is not None  # noqa: E731
    server.pid_file.write_text(f"{pid}\n")
    while not server.ready():
        if exited():
            raise server.failure("exited during start-up")
        if time.monotonic() > deadline:
            raise server.failure(f"not ready after {server.ready_timeout:.0f} s")
        time.sleep(0.2)


def wait_for_leafnodes(layout: Layout, timeout: float = 30.0) -> None:
    """Wait until every local site server is connected to the hub as a leafnode."""
    want = set(layout.local_sites)
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(f"http://{HOST}:{layout.hub_monitor_port}/leafz")
        have = {leaf.get("name") for leaf in json.loads(body).get("leafs") or []} if status == 200 else set()
        if want <= have:
            return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"nats-hub: sites {sorted(want - have)} did not join as leafnodes within {timeout:.0f} s; "
                "see .local/logs/nats-hub.log and .local/logs/nats-<site>.log"
            )
        time.sleep(0.2)


def adopt(server: Server) -> int | None:
    """Record the pid of a running server of this checkout whose pid file was lost or overwritten."""
    found = list(own_processes({server.name: server.marker}))
    if len(found) != 1:
        return None
    server.pid_file.write_text(f"{found[0]}\n")
    return found[0]


def started_as_now(server: Server) -> bool:
    """Whether the running server was started with the configuration the environment now asks for."""
    started_with = server.fingerprint_file.read_text() if server.fingerprint_file.exists() else ""
    return started_with == server.fingerprint()


def cmd_up(layout: Layout, lease: str | None) -> None:
    if lease:
        LEASES.mkdir(parents=True, exist_ok=True)
        (LEASES / lease).touch()
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


# --------------------------------------------------------------------------- down, release


def terminate(victims: dict[int, str], markers: dict[str, str]) -> None:
    """SIGTERM the processes, SIGKILL those still alive after STOP_WAIT_S, and wait for them to be gone."""
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while any(pid_alive(p, markers[n]) for p, n in victims.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, name in victims.items():
        if pid_alive(pid, markers[name]):
            print(f"{name:<{W}} did not stop within {STOP_WAIT_S:.0f} s: SIGKILL pid {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    reap_deadline = time.monotonic() + 5  # give init a moment to reap them: no <defunct> left in ps
    while any(Path(f"/proc/{p}").exists() for p in victims) and time.monotonic() < reap_deadline:
        time.sleep(0.1)


def cmd_down(layout: Layout, names: list[str], purge: bool) -> None:
    """Stop this checkout's servers: by pid file, plus strays whose pid file was lost.

    Overrides and the current CHATFED_SITES do not limit what is stopped: a server this checkout
    started is stopped even if the environment no longer names it.
    """
    servers = {s.name: s for s in all_servers(layout)}
    markers = {name: s.marker for name, s in servers.items()}
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
    terminate(victims, markers)
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


# --------------------------------------------------------------------------- status, info


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
    """How to reach a site: NATS as its operator (nats_user) or service user, its database and domain.

    A site whose NATS is external (CHATFED_NATS_URL_<SITE>) gets empty credentials: we do not manage them.
    """
    info = {"nats_url": layout.nats_url(site)}
    if site in layout.local_sites:
        creds = nats_credentials(site)
        operator, service = creds["operator"], creds["service"]
    else:
        operator = service = {"user": "", "password": ""}
    info.update(
        nats_user=operator["user"],
        nats_password=operator["password"],
        service_user=service["user"],
        service_password=service["password"],
        mongo_db=f"chat_{site}",
        domain=site,
    )
    return info


def cmd_info(layout: Layout) -> int:
    sites = {s: site_info(layout, s) for s in layout.sites}
    print(json.dumps({"sites": sites, "mongo_uri": layout.mongo_uri, "es_url": layout.es_url}))
    return 0


def cmd_rotate_secrets(layout: Layout) -> None:
    """Replace every NATS password of this checkout; the NATS servers must be down (they read them at start)."""
    running = [s.name for s in all_servers(layout) if s.name.startswith("nats-") and not s.external and s.pid()]
    strays = own_processes({"nats": str(CONF / "nats-")})
    if running or strays:
        names = ", ".join(running) or "nats-server processes of this checkout"
        raise ServiceError(f"{names} running: stop them first (./run.sh services down), then rotate, then up")
    for path in SECRETS.glob("nats-*.json"):  # also those of sites no longer in CHATFED_SITES
        path.unlink()
    for server in ("hub", *layout.local_sites):
        nats_credentials(server)
    print(f"{'secrets':<{W}} new NATS passwords in {SECRETS.relative_to(ROOT)}/; clients need the new ones (services info)")


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    lease = args[1] if args[:1] == ["--lease"] and len(args) == 2 else None
    valid = {
        "up": not args or (lease or "").isdigit(),
        "down": True,
        "status": not args,
        "info": not args,
        "release": len(args) == 1 and args[0].isdigit(),
        "rotate-secrets": not args,
    }
    if not valid.get(command, False):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        layout = load_layout(dict(os.environ))
        if command == "status":
            return cmd_status(layout)
        if command == "info":
            return cmd_info(layout)
        RUN.mkdir(parents=True, exist_ok=True)
        with (RUN / "services.lock").open("w") as lock:
            # one up/down/release at a time: concurrent test runs share this checkout's servers
            fcntl.flock(lock, fcntl.LOCK_EX)
            if command == "up":
                cmd_up(layout, lease)
            elif command == "down":
                cmd_down(layout, [a for a in args if a != "--purge"], purge="--purge" in args)
            elif command == "rotate-secrets":
                cmd_rotate_secrets(layout)
            else:
                cmd_release(layout, args[0])
    except ServiceError as exc:
        print(f"services: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
