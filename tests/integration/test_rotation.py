"""`services rotate-secrets` (issue 14): new passwords, a new CA and new certificates; the old ones stop working.

On a private set of NATS servers (the stores are the shared ones, never stopped here)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from nats.errors import Error as NatsError

from testkit.clients import connect_nats, nats_settings
from testkit.private_servers import PrivateServers

OWN_SERVERS = ("nats",)


def _fingerprints(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


async def _connects(info: dict[str, Any]) -> str:
    try:
        client = await connect_nats(nats_settings(info, "s1"), max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=5)
    except (NatsError, OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        return f"refused: {exc}"
    await client.close()
    return "connected"


@pytest.mark.slow
def test_rotate_secrets_replaces_passwords_the_ca_and_every_certificate(own_servers: PrivateServers, tmp_path: Path) -> None:
    before = dict(own_servers.info)
    pki = Path(before["tls_ca"]).parent
    old_files = _fingerprints(pki)
    kept = tmp_path / "old-pki"  # the old CA and client certificate, as a client that was not told would still use them
    kept.mkdir()
    for name, data in old_files.items():
        (kept / name).write_bytes(data)
    assert asyncio.run(_connects(before)) == "connected"

    with pytest.raises(AssertionError, match="stop them first"):  # never while the servers run
        own_servers.services("rotate-secrets")
    own_servers.services("down", *own_servers.names)
    own_servers.services("rotate-secrets")
    own_servers.services("up")
    after = json.loads(own_servers.services("info"))

    new_files = _fingerprints(pki)
    assert set(new_files) == set(old_files)
    assert [name for name in new_files if new_files[name] == old_files[name]] == []  # every key and certificate is new
    for site in ("s1", "s2"):
        assert after["sites"][site]["nats_password"] != before["sites"][site]["nats_password"]
        assert after["sites"][site]["service_password"] != before["sites"][site]["service_password"]
    assert asyncio.run(_connects(after)) == "connected"
    old_password = json.loads(json.dumps(after))
    old_password["sites"]["s1"]["nats_password"] = before["sites"]["s1"]["nats_password"]
    assert asyncio.run(_connects(old_password)).startswith("refused")
    old_ca = json.loads(json.dumps(after))  # the new password, but the old CA and client certificate
    old_ca["tls_ca"] = str(kept / "ca.crt")
    old_ca["sites"]["s1"] |= {"tls_cert": str(kept / "client-s1.crt"), "tls_key": str(kept / "client-s1.key")}
    assert asyncio.run(_connects(old_ca)).startswith("refused")
    own_servers.info = after
