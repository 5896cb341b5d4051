"""TLS on every NATS link (issue 14): client ports and leafnodes are TLS-only, clients and leafnodes present a certificate
of our CA, and a site's leafnode is whoever its certificate says it is.

Refusals are judged on what the servers answer (or log); each has a positive control with the right certificate.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import nats
import pytest
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from connectors import natsio
from connectors.settings import NatsSettings
from testkit.clients import connect_nats, nats_settings, nats_tls
from testkit.support import wait_for
from testkit.tls import RogueLeaf, foreign_client_cert, pki_file, plaintext_login


def _ports(servers: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Every NATS client and leafnode port: (host, port) by name."""
    urls = {f"nats-{site}": desc["nats_url"] for site, desc in servers["sites"].items()}
    urls |= {"hub": servers["hub"]["nats_url"], "hub leafnodes": servers["hub"]["leafnode_url"]}
    return {name: (urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 4222) for name, url in urls.items()}


def _context(servers: dict[str, Any], cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=servers["tls_ca"])
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


async def _attempt(url: str, **options: Any) -> str:
    try:
        client = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=5, **options)
    except (NatsError, OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    await client.close()
    return "connected"


def test_every_nats_port_refuses_a_plaintext_client(servers: dict[str, Any]) -> None:
    """The right user and password sent in the clear get nowhere: no PONG, an error, the connection closed."""
    s1 = servers["sites"]["s1"]
    for name, (host, port) in _ports(servers).items():
        answer = plaintext_login(host, port, s1["nats_user"], s1["nats_password"])
        assert answer.startswith("INFO ") and '"tls_required":true' in answer.replace(" ", ""), f"{name}: {answer[:200]}"
        assert "PONG" not in answer and "+OK" not in answer, f"{name} answered a plaintext login: {answer[-200:]}"


def test_site_servers_want_a_client_certificate_of_our_ca(servers: dict[str, Any], tmp_path: Path) -> None:
    foreign = foreign_client_cert(tmp_path, common_name="chatfed-client-s1")  # our subject, another CA

    async def attempts() -> None:
        for site, desc in servers["sites"].items():
            login = {"user": desc["nats_user"], "password": desc["nats_password"]}
            none = await _attempt(desc["nats_url"], tls=_context(servers, None, None), **login)
            other_ca = await _attempt(desc["nats_url"], tls=_context(servers, foreign.cert, foreign.key), **login)
            for outcome in (none, other_ca):
                assert outcome.startswith("refused"), f"{site}: {outcome}"
            assert await _attempt(desc["nats_url"], **nats_tls(servers, site), **login) == "connected", site

    asyncio.run(attempts())


def test_clients_check_the_server_certificate(servers: dict[str, Any], tmp_path: Path) -> None:
    """A client that trusts only another CA refuses our servers: the server side of the handshake is verified too."""
    foreign = foreign_client_cert(tmp_path)
    desc = servers["sites"]["s1"]
    context = ssl.create_default_context(cafile=str(foreign.ca))
    context.load_cert_chain(str(pki_file(servers, "client-s1.crt")), str(pki_file(servers, "client-s1.key")))
    outcome = asyncio.run(_attempt(desc["nats_url"], tls=context, user=desc["nats_user"], password=desc["nats_password"]))
    assert outcome.startswith("refused") and "certificate verify failed" in outcome, outcome


def test_a_tool_that_does_not_trust_the_server_stops_at_once_with_the_reason(servers: dict[str, Any]) -> None:
    """nats-py retries a failed TLS handshake forever; the CLI's connection (natsio.connect) and `chatfed room` give up
    at the first refusal instead of hanging (seen: a room command waiting for ever on a missing CA)."""
    desc = servers["sites"]["s1"]
    untrusting = NatsSettings(url=desc["nats_url"], user=desc["nats_user"], password=desc["nats_password"], tls_cert=desc["tls_cert"], tls_key=desc["tls_key"])

    async def attempt() -> None:
        with pytest.raises(natsio.NotPermitted, match="certificate verify failed"):
            await asyncio.wait_for(natsio.connect(untrusting, timeout=60), 30)  # the refusal, well before the timeout

    async def control() -> None:
        client = await natsio.connect(msgspec.structs.replace(untrusting, tls_ca=servers["tls_ca"]))
        await client.close()

    asyncio.run(attempt())
    asyncio.run(control())


# ----------------------------------------------------------------------------- leafnodes


async def _leafnode_names(servers: dict[str, Any]) -> set[str]:
    """The server names of the hub's leafnode connections (its monitoring port: TLS with a client certificate)."""
    import urllib.request

    context = _context(servers, pki_file(servers, "admin.crt"), pki_file(servers, "admin.key"))
    url = servers["hub"]["monitor_url"] + "/leafz"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, context=context, timeout=5).read())  # noqa: S310
    return {leaf.get("name") for leaf in json.loads(body).get("leafs") or []}


@pytest.mark.parametrize("certificate", ["none", "foreign CA", "client, not leaf", "s2's leaf"])
def test_the_hub_refuses_a_leafnode_claiming_s1_without_s1s_leaf_certificate(
    federated_sites: dict[str, Any], tmp_path: Path, certificate: str
) -> None:
    """Every attempt claims s1's leaf user in its URL; the hub takes the user from the certificate (verify_and_map), and
    refuses a certificate that is missing, from another CA, not a leaf's, or another site's leaf with a claim of s1."""
    foreign = foreign_client_cert(tmp_path)  # subject of s1's leaf certificate, from another CA
    cert = {
        "none": None,  # TLS, but no certificate presented
        "foreign CA": (foreign.cert, foreign.key),
        "client, not leaf": (pki_file(federated_sites, "client-s1.crt"), pki_file(federated_sites, "client-s1.key")),
        "s2's leaf": (pki_file(federated_sites, "leaf-s2.crt"), pki_file(federated_sites, "leaf-s2.key")),
    }[certificate]
    rogue = RogueLeaf(tmp_path, federated_sites["hub"]["leafnode_url"], Path(federated_sites["tls_ca"]), cert, url_user="s1-leaf")
    try:
        # the hub closes each attempt (TLS 1.3: the rogue only sees the connection closed); it retries every second
        closed = lambda: rogue.log_text().count("Leafnode connection closed") >= 2  # noqa: E731
        asyncio.run(wait_for(closed, timeout=30, what="two of the rogue's attempts closed by the hub"))
        assert rogue.name not in asyncio.run(_leafnode_names(federated_sites))
    finally:
        rogue.close()


def test_a_leafnode_with_s2s_certificate_is_s2_and_nothing_more(federated_sites: dict[str, Any], tmp_path: Path) -> None:
    """A second leafnode presenting s2's leaf certificate (and claiming nothing) is admitted as s2 only: it never receives
    what only s1 may receive, and it does get what s2 may (the positive control of the refusals above)."""
    s2_cert = (pki_file(federated_sites, "leaf-s2.crt"), pki_file(federated_sites, "leaf-s2.key"))
    rogue = RogueLeaf(tmp_path, federated_sites["hub"]["leafnode_url"], Path(federated_sites["tls_ca"]), s2_cert)
    marker = uuid.uuid4().hex
    to_s1 = f"fed.deliver.s2.to.s1.{marker}"  # only s1 may receive it
    to_s2 = f"fed.deliver.s1.to.s2.{marker}"  # s2 may

    async def scenario() -> None:
        await wait_for(lambda: _has(rogue.name), timeout=30, what="the rogue leafnode on the hub")
        spy = await nats.connect(rogue.url, max_reconnect_attempts=0)
        s1 = await connect_nats(nats_settings(federated_sites, "s1"))
        s2 = await connect_nats(nats_settings(federated_sites, "s2"))
        try:
            stolen = await spy.subscribe(to_s1)
            allowed = await spy.subscribe(to_s2)
            legit = await s1.subscribe(to_s1)
            await spy.flush()
            await s1.flush()

            async def both_arrive() -> bool:  # s2 sends to s1, s1 sends to s2, until interest has crossed the hub
                await s2.publish(to_s1, b"x")
                await s1.publish(to_s2, b"x")
                await s1.flush()
                await s2.flush()
                got = []
                for sub in (legit, allowed):
                    try:
                        await sub.next_msg(timeout=0.3)
                        got.append(True)
                    except NatsTimeoutError:
                        got.append(False)
                return all(got)

            await wait_for(both_arrive, timeout=30, interval=0, what="s1's and the rogue's deliveries")
            with pytest.raises(NatsTimeoutError):
                await stolen.next_msg(timeout=1)
        finally:
            for client in (spy, s1, s2):
                await client.close()

    async def _has(name: str) -> bool:
        return name in await _leafnode_names(federated_sites)

    try:
        asyncio.run(scenario())
    finally:
        rogue.close()
