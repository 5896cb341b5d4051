"""Sites, ports and external-server overrides, read once from the environment; where the servers' files live."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from schemas import names

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / ".local"
# CHATFED_STATE_DIR (under the checkout): a private set of servers, e.g. an outage test's own, keeps its files apart
STATE = Path(os.environ.get("CHATFED_STATE_DIR") or LOCAL)
DATA, LOGS, RUN, CONF, SECRETS = (STATE / d for d in ("data", "logs", "run", "conf", "secrets"))
LEASES = RUN / "leases"
HOST = "127.0.0.1"

MONGO_BACKENDS = ("postgresql", "sqlite")  # FerretDB's storage (README, "The MongoDB-protocol store")
DEFAULT_MONGO_BACKEND = "postgresql"  # the faster at realistic sizes (README, "The MongoDB-protocol store")
HUB = "hub"  # the NATS hub's name among the sites' (its secrets file, its server): no site may take it
MAX_SITES = 20  # site client ports base+10.. and monitor ports base+30.. must not overlap
W = 12  # width of the name column in printed lines


class ServiceError(Exception):
    """A server could not be configured, started or stopped."""


@dataclass(frozen=True)
class Layout:
    """Sites, ports and external-server overrides, read once from the environment."""

    sites: tuple[str, ...]
    port_base: int
    es_port: int
    ferret_port: int
    mongo_backend: str = DEFAULT_MONGO_BACKEND
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
        return self.url(f"nats-{site}", f"tls://{HOST}:{self.site_port(site)}")

    @property
    def local_sites(self) -> list[str]:
        return [s for s in self.sites if f"nats-{s}" not in self.overrides]

    @property
    def ferret_socket(self) -> Path:
        """FerretDB's unix socket, in a folder only this OS user may enter: under the state dir, or, when that path is too
        long for a socket address (108 bytes), in a folder of /tmp named after the state dir."""
        inside = RUN / "ferretdb" / "db.sock"
        if len(str(inside).encode()) <= 100:
            return inside
        return Path(tempfile.gettempdir()) / f"chatfed-{hashlib.sha256(str(STATE).encode()).hexdigest()[:16]}" / "db.sock"

    @property
    def postgres_port(self) -> int:
        return self.ferret_port + 2  # names its unix socket only: PostgreSQL listens on no TCP port

    @property
    def mongo_uri(self) -> str:
        return self.url("ferretdb", f"mongodb://{quote(str(self.ferret_socket), safe='')}/")

    @property
    def es_url(self) -> str:
        return self.url("es", f"https://{HOST}:{self.es_port}")


def _port(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 1024 <= int(raw) <= 65000:
        raise ServiceError(f"{name}={raw!r}: expected a port number between 1024 and 65000")
    return int(raw)


def load_layout(env: dict[str, str]) -> Layout:
    sites = tuple(env.get("CHATFED_SITES", "").split() or ("s1", "s2"))
    for site in sites:
        if not names.is_valid_site_id(site) or site == HUB:
            raise ServiceError(f"CHATFED_SITES: bad site id {site!r} (lowercase letters, digits, '-' not first; not {HUB!r})")
    if len(set(sites)) != len(sites) or len(sites) > MAX_SITES:
        raise ServiceError(f"CHATFED_SITES={' '.join(sites)!r}: ids must be unique, at most {MAX_SITES}")
    candidates = {
        "ferretdb": ("CHATFED_MONGO_URI", "MONGO_URI"),
        "es": ("CHATFED_ES_URL",),
        **{f"nats-{s}": ("CHATFED_NATS_URL_" + s.upper().replace("-", "_"),) for s in sites},
    }
    overrides = {}
    for server, variables in candidates.items():
        var = next((v for v in variables if env.get(v)), None)
        if var:
            overrides[server] = (var, env[var])
    backend = env.get("CHATFED_MONGO_BACKEND", "").strip() or DEFAULT_MONGO_BACKEND
    if backend not in MONGO_BACKENDS:
        raise ServiceError(f"CHATFED_MONGO_BACKEND={backend!r}: expected one of {', '.join(MONGO_BACKENDS)}")
    return Layout(
        sites=sites,
        port_base=_port(env, "CHATFED_PORT_BASE", 14220),
        es_port=_port(env, "CHATFED_ES_PORT", 19200),
        ferret_port=_port(env, "CHATFED_FERRET_PORT", 37017),
        mongo_backend=backend,
        overrides=overrides,
    )
