"""Elasticsearch's own config folder (ES_PATH_CONF = CONF/es): security on, HTTPS and transport TLS, file-realm users.

The install's config/ is shared by every checkout that links .local/opt; each set of servers gets its own folder
instead, seeded from it (jvm.options, log4j2.properties), with:

  tls/es.crt, es.key, ca.crt   the server certificate from pki.py (ES reads TLS files only inside its config folder)
  roles.yml                    chatfed_operator: everything on indexes, cluster monitor and manage (no security APIs);
                               chatfed_search_sync_<site>: read, write, refresh and alias lookups on that site's
                               search views only: no index creation or deletion, no other site's indexes
  users, users_roles           the file realm: chatfed-operator and search-sync-<site> (PBKDF2 hashes)

Nobody is anonymous: a request without valid credentials gets 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

from .credentials import es_operator, es_search_sync, write_private
from .layout import Layout
from .pki import ES, ca_file, cert_file, key_file

OPERATOR_ROLE = "chatfed_operator"
PBKDF2_ROUNDS = 10_000  # Elasticsearch's PBKDF2 default: {PBKDF2}<rounds>$<salt>$<key>, HMAC-SHA512, 256-bit key
SEEDED = ("jvm.options", "jvm.options.d", "log4j2.properties", "elasticsearch.yml", "role_mapping.yml")


def search_sync_role(site: str) -> str:
    return f"chatfed_search_sync_{site}"


def site_indexes(site: str) -> str:
    """A role pattern for `site`'s search views: the aliases and their concrete `{alias}-v{version}` indexes."""
    return f"/(user-room|spotlight|room-names)-{site}(-v[0-9]+)?/"


def roles(layout: Layout) -> dict[str, object]:
    defined: dict[str, object] = {
        OPERATOR_ROLE: {"cluster": ["monitor", "manage"], "indices": [{"names": ["*"], "privileges": ["all"]}]},
    }
    for site in layout.sites:
        # read: get/mget/search; write: bulk index and delete of documents; maintenance: refresh (a rename's search);
        # view_index_metadata: the flow checks its aliases exist at start. Creating indexes and aliases is the operator's.
        privileges = ["read", "write", "maintenance", "view_index_metadata"]
        defined[search_sync_role(site)] = {"cluster": [], "indices": [{"names": [site_indexes(site)], "privileges": privileges}]}
    return defined


def roles_yaml(layout: Layout) -> str:
    """roles.yml: each role at column 0 (the file realm splits the file there), its fields as JSON flow values."""
    lines = []
    for name, fields in roles(layout).items():
        lines.append(f"{name}:")
        lines += [f"  {key}: {json.dumps(value)}" for key, value in fields.items()]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


def password_hash(password: str) -> str:
    salt = os.urandom(32)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ROUNDS, dklen=32)
    return f"{{PBKDF2}}{PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def write_conf(layout: Layout, folder: Path, es_home: Path) -> None:
    """Fill `folder` (ES_PATH_CONF): the install's defaults once, then TLS files, roles and users at every start."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name in SEEDED:
        source, target = es_home / "config" / name, folder / name
        if target.exists() or not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    tls = folder / "tls"
    tls.mkdir(exist_ok=True)
    tls.chmod(0o700)
    for source, target in ((cert_file(ES), tls / "es.crt"), (ca_file(), tls / "ca.crt")):
        shutil.copyfile(source, target)
    write_private(tls / "es.key", key_file(ES).read_text())
    write_private(folder / "roles.yml", roles_yaml(layout))
    users = {es_operator()["user"]: (es_operator()["password"], OPERATOR_ROLE)}
    for site in layout.sites:
        account = es_search_sync(site)
        users[account["user"]] = (account["password"], search_sync_role(site))
    write_private(folder / "users", "".join(f"{user}:{password_hash(pw)}\n" for user, (pw, _) in users.items()))
    by_role: dict[str, list[str]] = {}
    for user, (_, role) in users.items():
        by_role.setdefault(role, []).append(user)
    write_private(folder / "users_roles", "".join(f"{role}:{','.join(names)}\n" for role, names in by_role.items()))


def security_settings() -> dict[str, str]:
    """The -E settings that turn security on (paths relative to ES_PATH_CONF)."""
    tls = {"key": "tls/es.key", "certificate": "tls/es.crt", "certificate_authorities": "tls/ca.crt"}
    settings = {"xpack.security.enabled": "true", "xpack.security.http.ssl.enabled": "true"}
    settings |= {f"xpack.security.http.ssl.{k}": v for k, v in tls.items()}
    settings |= {"xpack.security.transport.ssl.enabled": "true", "xpack.security.transport.ssl.verification_mode": "certificate"}
    settings |= {f"xpack.security.transport.ssl.{k}": v for k, v in tls.items()}
    return settings
