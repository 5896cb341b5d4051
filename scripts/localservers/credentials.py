"""The NATS users and passwords of each site and of the hub.

Per-site passwords live in SECRETS/nats-<site>.json, the hub's in SECRETS/nats-hub.json: generated at the
first `up` (or `info`), 0600, reused afterwards; `rotate-secrets` replaces them (servers down).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from .layout import HUB, ROOT, SECRETS, ServiceError

SITE_ROLES = ("operator", "service")  # a site's leafnode logs in with its certificate (pki.py)
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


def _roles(server: str) -> tuple[str, ...]:
    return HUB_ROLES if server == HUB else SITE_ROLES


def _new_credentials(server: str) -> dict[str, dict[str, str]]:
    return {role: {"user": f"{server}-{role}", "password": secrets.token_urlsafe(24)} for role in _roles(server)}


def nats_credentials(server: str) -> dict[str, dict[str, str]]:
    """{role: {user, password}} of a site ("operator", "service") or of the hub ("admin").

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
        roles = _roles(server)
        if all(creds[r]["user"] and creds[r]["password"] for r in roles):
            return {r: {"user": str(creds[r]["user"]), "password": str(creds[r]["password"])} for r in roles}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise ServiceError(f"{path.relative_to(ROOT)}: unreadable or incomplete; delete it (servers down) to regenerate")
