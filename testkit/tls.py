"""What the TLS tests need besides our own PKI: certificates from a CA of nobody's, raw plaintext probes, a rogue leafnode."""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testkit.support import REPO


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path


def pki_file(servers: dict[str, Any], name: str) -> Path:
    """A file of the servers' PKI next to their CA (scripts/localservers/pki.py names them)."""
    return Path(servers["tls_ca"]).with_name(name)


def foreign_client_cert(folder: Path, common_name: str = "chatfed-leaf-s1") -> CertFiles:
    """A client certificate from a fresh CA that none of our servers trusts, with the subject of one of ours."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, issuer: str, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("chatfed local CA", "chatfed local CA", ca_key, ca_key, True)  # same name as ours, other key
    cert = build(common_name, "chatfed local CA", key, ca_key, False)
    files = CertFiles(cert=folder / "foreign.crt", key=folder / "foreign.key", ca=folder / "foreign-ca.crt")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files.key.write_bytes(pem)
    files.key.chmod(0o600)
    return files


def plaintext_login(host: str, port: int, user: str, password: str, timeout: float = 5) -> str:
    """Speak the NATS protocol without TLS: read INFO, send CONNECT and PING in the clear; return what came back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        received = b""
        try:
            received += sock.recv(65536)  # INFO: sent in the clear before the TLS upgrade
            connect = json.dumps({"user": user, "pass": password, "verbose": False, "pedantic": False, "protocol": 1})
            sock.sendall(f"CONNECT {connect}\r\nPING\r\n".encode())
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
    return received.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RogueLeaf:
    """A nats-server of nobody's that joins the hub as a leafnode with the certificate it is given.

    Its own client port is plaintext and open (it is the test's instrument), so the test can subscribe through it.
    `cert`: the (certificate, key) it presents, if any. `url_user`: a user name (and password) claimed in the remote's
    URL, which the hub must ignore.
    """

    def __init__(self, folder: Path, hub_leaf_url: str, ca: Path, cert: tuple[Path, Path] | None, *, url_user: str = "") -> None:
        self.name = f"rogue-{folder.name}"[:60]
        self.port = free_port()
        self.log = folder / "rogue.log"
        host_port = hub_leaf_url.split("://", 1)[1]
        url = f"tls://{url_user}:claimed@{host_port}" if url_user else f"tls://{host_port}"
        tls: dict[str, object] = {"ca_file": str(ca), "timeout": 5}  # trusts the hub's certificate: only ours is judged
        if cert is not None:
            tls |= {"cert_file": str(cert[0]), "key_file": str(cert[1])}
        remote = {"url": url, "tls": tls}
        conf = folder / "rogue.conf"
        conf.write_text(f"server_name: {json.dumps(self.name)}\nlisten: 127.0.0.1:{self.port}\nleafnodes {{ remotes [ {json.dumps(remote)} ] }}\n")
        self.proc = subprocess.Popen(  # noqa: S603 - the venv's nats-server
            [str(REPO / ".venv" / "bin" / "nats-server"), "-c", str(conf), "-l", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
