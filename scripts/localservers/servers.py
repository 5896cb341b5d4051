"""Each local server: its command line, config, files, and how to tell it is ready."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import ssl
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .credentials import MONGO_AUTH_DB, es_operator, mongo_service, write_private
from .esconf import security_settings, write_conf
from .layout import CONF, DATA, HOST, LOCAL, LOGS, ROOT, RUN, Layout, ServiceError
from .natsconf import nats_hub_conf, nats_site_conf
from .pki import ca_file, client_context
from .processes import http_get, log_tail, pid_alive, read_pid, unix_open

ES_VERSION = "8.19.21"
ES_HOME = LOCAL / "opt" / f"elasticsearch-{ES_VERSION}"
ES_USER = "chatfed-es"
ES_JAVA_HOMES = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/temurin-25-jdk-amd64")
FERRET_BIN = LOCAL / "bin" / "ferretdb"
PG_USER = "chatfed-pg"
PG_SUPERUSER = "postgres"
PG_DATABASE = "ferretdb"
PG_SETUP = Path(__file__).with_name("postgres.sql")
# left by `rotate-secrets`: PostgreSQL's next start drops FerretDB's users (its `admin` database, a schema there), before
# FerretDB starts and creates its user anew with the new password (it creates none while that database exists)
PG_DROP_USERS = DATA / "postgres-drop-ferretdb-users"


@dataclass
class Server:
    """One local server process: how to start it, how to tell it is ready, where its files are."""

    name: str
    address: str  # what clients connect to, for status lines
    port: int | None  # must be free before start (None: the server listens on no TCP port)
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
    setup: Callable[[], None] = lambda: None  # once ready, at every start (idempotent)
    stop_signal: int = signal.SIGTERM

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
        address=f"tls://{HOST}:{layout.port_base} (leafnodes :{layout.hub_leaf_port})",
        port=layout.port_base,
        marker=str(conf),
        argv=lambda: [nats_bin(), "-c", str(conf)],
        config=lambda: nats_hub_conf(layout),
        prepare=lambda: write_private(conf, nats_hub_conf(layout)),
        ready=lambda: http_get(f"https://{HOST}:{layout.hub_monitor_port}/healthz", context=client_context())[0] == 200,
    )


def nats_site(layout: Layout, site: str) -> Server:
    conf = CONF / f"nats-{site}.conf"

    def prepare() -> None:
        (DATA / f"nats-{site}").mkdir(parents=True, exist_ok=True)
        (DATA / f"nats-{site}").chmod(0o700)  # the streams: this OS user's alone
        write_private(conf, nats_site_conf(layout, site))

    health = f"https://{HOST}:{layout.site_monitor_port(site)}/healthz?js-enabled-only=true"
    return Server(
        name=f"nats-{site}",
        address=f"{layout.nats_url(site)} (domain {site})",
        port=layout.site_port(site),
        marker=str(conf),
        argv=lambda: [nats_bin(), "-c", str(conf)],
        config=lambda: nats_site_conf(layout, site),
        prepare=prepare,
        ready=lambda: http_get(health, context=client_context())[0] == 200,
    )


def _let_through(*dirs: Path) -> None:
    """Let a server's own user reach its files under `dirs` (o+x on them and on every parent)."""
    for parent in (p for d in dirs for p in (*reversed(d.parents), d)):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def es_java_home() -> str:
    for home in (os.environ.get("ES_JAVA_HOME"), *ES_JAVA_HOMES):
        if home and Path(home, "bin", "java").exists():
            return home
    raise ServiceError(f"no JDK for Elasticsearch: set ES_JAVA_HOME (looked in {', '.join(ES_JAVA_HOMES)})")


def es(layout: Layout) -> Server:
    data, logs, run, conf = DATA / "es", LOGS / "es", RUN / "es", CONF / "es"
    as_root = os.geteuid() == 0

    def prepare() -> None:
        if not (ES_HOME / "bin" / "elasticsearch").exists():
            raise ServiceError(f"{ES_HOME.relative_to(ROOT)} missing: run ./run.sh install")
        for d in (data, logs, run / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (run / "jvm.pid").unlink(missing_ok=True)
        write_conf(layout, conf, ES_HOME)  # its own config folder: security, TLS, users (esconf.py)
        if as_root:  # ES refuses root: ES_USER runs it and needs its own dirs and a path to them
            try:
                uid = pwd.getpwnam(ES_USER).pw_uid
            except KeyError:
                raise ServiceError(f"user {ES_USER} missing: run ./run.sh install") from None
            if (ES_HOME / "config").stat().st_uid != uid:
                raise ServiceError(f"{ES_HOME.relative_to(ROOT)} not owned by {ES_USER}: run ./run.sh install")
            for d in (data, logs, run, run / "tmp"):
                shutil.chown(d, ES_USER, ES_USER)
            for path in (conf, *conf.rglob("*")):  # its config, keys and users: readable by it alone
                shutil.chown(path, ES_USER, ES_USER)
            _let_through(LOCAL / "opt", DATA, LOGS, RUN, CONF)

    settings = {
        "network.host": HOST,
        "http.port": layout.es_port,
        "transport.port": layout.es_port + 100,
        "discovery.type": "single-node",
        "path.data": data,
        "path.logs": logs,
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "action.destructive_requires_name": "false",
        **security_settings(),
    }
    flags = [arg for k, v in settings.items() for arg in ("-E", f"{k}={v}")]
    health = f"{layout.es_url}/_cluster/health?wait_for_status=yellow&timeout=5s"

    def ready() -> bool:
        operator = es_operator()
        context = ssl.create_default_context(cafile=str(ca_file()))
        return http_get(health, timeout=10, context=context, auth=(operator["user"], operator["password"]))[0] == 200

    return Server(
        name="es",
        address=layout.es_url,
        port=layout.es_port,
        marker=f"-Djava.io.tmpdir={run / 'tmp'}",  # ES_TMPDIR: one per state dir (path.home is shared)
        argv=lambda: [str(ES_HOME / "bin" / "elasticsearch"), *flags, "-d", "-p", str(run / "jvm.pid")],
        prepare=prepare,
        ready=ready,
        env={"ES_JAVA_OPTS": "-Xms1g -Xmx1g", "ES_TMPDIR": str(run / "tmp"), "HOME": str(run), "ES_PATH_CONF": str(conf)},
        user=ES_USER if as_root else None,
        cwd=ES_HOME,
        daemon_pid_file=run / "jvm.pid",
        ready_timeout=360.0,  # security and TLS add to a start that takes minutes on a loaded 2-core machine
        extra_logs=(logs / "elasticsearch.log",),
    )


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian's `postgresql` package)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres") if p.parent.parent.name.isdigit()]
    if not found:
        raise ServiceError("PostgreSQL missing (/usr/lib/postgresql/*/bin): run ./run.sh install")
    return max(found, key=lambda p: int(p.parent.name))


def pg_socket_dir() -> Path:
    """Where the local PostgreSQL's unix socket lives: run/postgres, or a directory in /tmp named after it when that
    path is too long for a socket (at most 107 bytes with the socket's own name)."""
    sock = RUN / "postgres"
    return sock if len(str(sock)) <= 80 else Path(tempfile.gettempdir()) / f"chatfed-pg-{hashlib.sha256(str(sock).encode()).hexdigest()[:12]}"


def pg_url(layout: Layout) -> str:
    """libpq URL of FerretDB's database on the local PostgreSQL (trust: only who can enter the socket's directory)."""
    return f"postgresql://{PG_SUPERUSER}@/{PG_DATABASE}?host={pg_socket_dir()}&port={layout.postgres_port}"


def postgres(layout: Layout) -> Server:
    """FerretDB's PostgreSQL: a private cluster reached through a unix socket in a 0700 directory (no TCP port)."""
    data, sock, port = DATA / "postgres", pg_socket_dir(), layout.postgres_port
    user = PG_USER if os.geteuid() == 0 else None  # PostgreSQL refuses root
    as_user = {"user": user, "group": user, "extra_groups": []} if user else {}

    def run(*argv: str, sql: str | None = None) -> subprocess.CompletedProcess[str]:
        # in its data directory, with the SQL on stdin: the server's user may not read the checkout
        out = subprocess.run(argv, input=sql, capture_output=True, text=True, check=False, cwd=data, **as_user)  # type: ignore[call-overload]  # noqa: S603
        if out.returncode != 0:
            raise ServiceError(f"postgres: {' '.join(argv[:2])} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")
        return out

    def prepare() -> None:
        for d in (data, sock):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        if user:
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise ServiceError(f"user {user} missing: run ./run.sh install") from None
            for d in (data, sock):
                shutil.chown(d, user, user)
            _let_through(DATA, RUN)
        if not (data / "PG_VERSION").exists():
            run(str(pg_bin() / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C")

    def psql(database: str, sql: str) -> str:
        return run(str(pg_bin() / "psql"), "-h", str(sock), "-p", str(port), "-U", PG_SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", sql=sql).stdout

    def setup() -> None:
        if not psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'").strip():
            psql("postgres", f"CREATE DATABASE {PG_DATABASE}")
        psql(PG_DATABASE, PG_SETUP.read_text())
        if PG_DROP_USERS.exists():
            psql(PG_DATABASE, f'DROP SCHEMA IF EXISTS "{MONGO_AUTH_DB}" CASCADE')
            PG_DROP_USERS.unlink()

    settings = {
        "listen_addresses": "",  # the socket only: its 0700 directory admits this user (and root) alone
        "unix_socket_directories": sock,
        "unix_socket_permissions": "0700",
        # FerretDB sends `_jsonb -> $1 @> $2` as a prepared statement: plan each with its field name, which is what
        # lets the GIN twins (postgres.sql) match; a generic plan would read the whole table
        "plan_cache_mode": "force_custom_plan",
        "jit": "off",  # no compile pauses on big scans
    }
    ready = [str(pg_bin() / "pg_isready"), "-q", "-h", str(sock), "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres"]
    return Server(
        name="postgres",
        address=f"{sock}/.s.PGSQL.{port} (database {PG_DATABASE})",
        port=None,
        marker=f"-D {data} ",
        argv=lambda: [str(pg_bin() / "postgres"), "-D", str(data), "-p", str(port), *(a for k, v in settings.items() for a in ("-c", f"{k}={v}"))],
        prepare=prepare,
        ready=lambda: subprocess.run(ready, check=False).returncode == 0,  # noqa: S603
        setup=setup,
        user=user,
        stop_signal=signal.SIGINT,  # fast shutdown: SIGTERM would wait for FerretDB's pooled connections to end
    )


def ferretdb(layout: Layout) -> Server:
    """FerretDB with authentication (SCRAM-SHA-256; `--test-enable-new-auth` works on any backend) on a unix socket in
    a 0700 folder instead of a TCP port: FerretDB checks who logs in but not what they may do (roles are ignored), so
    only this OS user may even reach it. Its user is created at the first start (`--setup-*`); the password goes in
    through the environment, never on the command line (`ps` shows that to every user)."""
    data, sock = DATA / "ferretdb", layout.ferret_socket

    def prepare() -> None:
        if not FERRET_BIN.exists():
            raise ServiceError(f"{FERRET_BIN.relative_to(ROOT)} missing: run ./run.sh install")
        for d in (data, data / "sqlite", data / "state", sock.parent):
            d.mkdir(parents=True, exist_ok=True)
        for d in (data, sock.parent):  # the databases and the socket: this OS user's alone
            if d.stat().st_uid != os.geteuid():
                raise ServiceError(f"{d} belongs to another user: remove it, or start the servers as its owner")
            d.chmod(0o700)
        sock.unlink(missing_ok=True)  # left by a killed server (start() runs only when none is running)

    port = layout.ferret_port
    if layout.mongo_backend == "postgresql":
        backend = ["--handler=postgresql", f"--postgresql-url={pg_url(layout)}"]
    else:
        backend = ["--handler=sqlite", f"--sqlite-url=file:{data / 'sqlite'}/"]
    argv = [
        str(FERRET_BIN),
        *backend,
        "--listen-addr=",  # no TCP listener
        f"--listen-unix={sock}",
        f"--debug-addr={HOST}:{port + 1}",  # metrics and probes only, no data
        "--telemetry=disable",
        f"--state-dir={data / 'state'}",
        "--log-level=WARN",
        "--test-enable-new-auth",
        f"--setup-database={MONGO_AUTH_DB}",
        f"--setup-username={mongo_service()['user']}",
    ]
    return Server(
        name="ferretdb",
        address=layout.mongo_uri,
        port=port + 1,
        marker=f"--state-dir={data / 'state'}",
        argv=lambda: argv,
        prepare=prepare,
        ready=lambda: unix_open(sock),  # stdlib only: no MongoDB ping
        env={"FERRETDB_SETUP_PASSWORD": mongo_service()["password"]},
    )


def all_servers(layout: Layout) -> list[Server]:
    """Every server, in start order (the hub before the sites that connect to it)."""
    hub = [nats_hub(layout)] if layout.local_sites else []
    store = [postgres(layout)] if layout.mongo_backend == "postgresql" and "ferretdb" not in layout.overrides else []
    servers = [*hub, *(nats_site(layout, s) for s in layout.sites), *store, ferretdb(layout), es(layout)]
    for server in servers:
        server.external = layout.overrides.get(server.name, (None, ""))[0]
    return servers
