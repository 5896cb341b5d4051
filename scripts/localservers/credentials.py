"""The users and passwords of the local servers, one 0600 JSON file each under SECRETS.

  nats-<site>.json  the site's NATS operator and service users      nats-hub.json  the hub's admin
  es.json           Elasticsearch's operator (the CLI, bootstrap)   es-<site>.json the site's search_sync user
  mongo.json        FerretDB's user (the flows and the CLI)

Generated at the first `up` (or `info`), reused afterwards; `rotate-secrets` replaces them (servers down).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from .layout import HUB, ROOT, SECRETS, ServiceError

SITE_ROLES = ("operator", "service")  # a site's leafnode logs in with its certificate (pki.py)
HUB_ROLES = ("admin",)

Credentials = dict[str, dict[str, str]]  # role -> {user, password}


def secrets_file(server: str) -> Path:
    """NATS: `server` is a site id or "hub"."""
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


def stored_credentials(path: Path, users: dict[str, str]) -> Credentials:
    """{role: {user, password}} kept in `path`; `users` maps each role to its user name. Created on first use.

    Concurrent callers agree: the file is published with a hard link, which fails if another process got there
    first, and then everyone reads the winner's file.
    """
    if not path.exists():
        SECRETS.mkdir(parents=True, exist_ok=True)
        SECRETS.chmod(0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        fresh = {role: {"user": user, "password": secrets.token_urlsafe(24)} for role, user in users.items()}
        write_private(tmp, json.dumps(fresh, indent=1) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        creds = json.loads(path.read_text())
        if all(creds[r]["user"] and creds[r]["password"] for r in users):
            return {r: {"user": str(creds[r]["user"]), "password": str(creds[r]["password"])} for r in users}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise ServiceError(f"{path.relative_to(ROOT)}: unreadable or incomplete; delete it (servers down) to regenerate")


def nats_credentials(server: str) -> Credentials:
    """{role: {user, password}} of a site ("operator", "service") or of the hub ("admin")."""
    roles = HUB_ROLES if server == HUB else SITE_ROLES
    return stored_credentials(secrets_file(server), {role: f"{server}-{role}" for role in roles})


def es_operator() -> dict[str, str]:
    """Elasticsearch's operator: the CLI, bootstrap, tests."""
    return stored_credentials(SECRETS / "es.json", {"operator": "chatfed-operator"})["operator"]


def es_search_sync(site: str) -> dict[str, str]:
    """`site`'s search_sync user on Elasticsearch: its own search views only."""
    return stored_credentials(SECRETS / f"es-{site}.json", {"search_sync": f"search-sync-{site}"})["search_sync"]


MONGO_AUTH_DB = "admin"  # where FerretDB keeps its users: holds nothing else, so a rotation may drop it


def mongo_service() -> dict[str, str]:
    """FerretDB's one user (it has no roles to tell users apart): the flows, the CLI, tests."""
    return stored_credentials(SECRETS / "mongo.json", {"service": "chatfed"})["service"]


def rotate_all() -> None:
    """Forget every password (servers down): the next use generates new ones."""
    for path in SECRETS.glob("*.json"):
        path.unlink()
