"""A small private CA and the certificates of every local server and client (TLS on every link).

Generated under SECRETS/tls/ at install or at the first `up` (keys 0600, the folder 0700), reused afterwards;
`rotate-secrets` issues all of them again, the CA included. CHATFED_PKI_DIR points at a folder of your own
with the same file names instead: then nothing is generated or rotated here.

  ca.crt / ca.key                 the CA every server and client trusts
  nats-hub.*  nats-<site>.*       server certificates (127.0.0.1, localhost) of the NATS hub and site servers
  leaf-<site>.*                   client certificate of a site's leafnode link; the hub maps it to that site's
                                  leaf user (verify_and_map): the certificate *is* the site's identity
  client-<site>.*                 client certificate of a site's NATS clients (flows, CLI): every NATS port verifies one
  admin.*                         client certificate of services.py (NATS monitoring probes)
  es.*                            Elasticsearch (HTTP and transport)

`cryptography` is imported only when something is issued: `info`, `status` and `down` stay stdlib-only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
from pathlib import Path
from typing import Any

from .credentials import write_private
from .layout import HUB, ROOT, SECRETS, Layout, ServiceError

CA = "ca"
ADMIN = "admin"
ES = "es"
CA_DAYS = 3650
CERT_DAYS = 825
RENEW_BEFORE_DAYS = 30  # `up` reissues a certificate that expires sooner than this


def pki_dir() -> Path:
    """Where the CA and certificates live: CHATFED_PKI_DIR (your own PKI) or SECRETS/tls."""
    return Path(os.environ.get("CHATFED_PKI_DIR") or SECRETS / "tls")


def own_pki() -> bool:
    """True when the certificates are the user's own (CHATFED_PKI_DIR): never generated or rotated here."""
    return bool(os.environ.get("CHATFED_PKI_DIR"))


def cert_file(name: str) -> Path:
    return pki_dir() / f"{name}.crt"


def key_file(name: str) -> Path:
    return pki_dir() / f"{name}.key"


def ca_file() -> Path:
    return cert_file(CA)


def nats_server_name(server: str) -> str:
    """`server` is a site id or "hub"."""
    return f"nats-{server}"


def leaf_name(site: str) -> str:
    return f"leaf-{site}"


def client_name(site: str) -> str:
    return f"client-{site}"


def leaf_identity(site: str) -> str:
    """The subject of `site`'s leaf certificate: the user name the hub maps it to."""
    return f"CN=chatfed-leaf-{site}"


# name -> (common name, server certificate?, client certificate?)
def wanted(layout: Layout) -> dict[str, tuple[str, bool, bool]]:
    certs: dict[str, tuple[str, bool, bool]] = {
        nats_server_name(HUB): ("chatfed-nats-hub", True, False),
        ADMIN: ("chatfed-admin", False, True),
        ES: ("chatfed-es", True, True),  # the transport layer uses it both ways
    }
    for site in layout.local_sites:
        certs[nats_server_name(site)] = (f"chatfed-nats-{site}", True, False)
        certs[leaf_name(site)] = (leaf_identity(site).removeprefix("CN="), False, True)
        certs[client_name(site)] = (f"chatfed-client-{site}", False, True)
    return certs


def _crypto() -> Any:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ServiceError("the `cryptography` package is missing: run ./run.sh install") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write_key(path: Path, key: Any) -> None:
    _, _, serialization, *_ = _crypto()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem.decode())


def _write_cert(path: Path, cert: Any) -> None:
    _, _, serialization, *_ = _crypto()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)  # a certificate is public
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _new_ca() -> None:
    x509, hashes, _, ec, _, NameOID = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatfed local CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_file(CA), key)
    _write_cert(ca_file(), cert)


def _issue(name: str, common_name: str, server: bool, client: bool) -> None:
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    ca_key = serialization.load_pem_private_key(key_file(CA).read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_file().read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = ([EKU.SERVER_AUTH] if server else []) + ([EKU.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if server:  # the servers listen on loopback only
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_key(key_file(name), key)
    _write_cert(cert_file(name), builder.sign(ca_key, hashes.SHA256()))


def _needs_issuing(name: str) -> bool:
    if not (cert_file(name).exists() and key_file(name).exists()):
        return True
    x509, *_ = _crypto()
    cert = x509.load_pem_x509_certificate(cert_file(name).read_bytes())
    ca = x509.load_pem_x509_certificate(ca_file().read_bytes())
    renew_at = _now() + datetime.timedelta(days=RENEW_BEFORE_DAYS)
    return cert.issuer != ca.subject or cert.not_valid_after_utc < renew_at or cert.not_valid_before_utc > _now()


def ensure_pki(layout: Layout) -> None:
    """The CA and every certificate `layout` needs, issuing what is missing or about to expire (idempotent).

    Callers hold services.py's lock (up, start, rotate-secrets, tls), so two runs never issue at once.
    """
    if own_pki():
        needed = [ca_file(), *(p for n in wanted(layout) for p in (cert_file(n), key_file(n)))]
        missing = [p.name for p in needed if not p.exists()]
        if missing:
            raise ServiceError(f"CHATFED_PKI_DIR={pki_dir()} lacks {', '.join(missing)}")
        return
    directory = pki_dir()
    directory.mkdir(parents=True, exist_ok=True)
    directory.parent.chmod(0o700)
    directory.chmod(0o700)
    if not (ca_file().exists() and key_file(CA).exists()):
        for old in directory.glob("*.crt"):  # issued by a CA that is gone
            old.unlink()
        _new_ca()
    for name, (common_name, server, client) in wanted(layout).items():
        if _needs_issuing(name):
            _issue(name, common_name, server, client)


def client_context(name: str = ADMIN) -> ssl.SSLContext:
    """A TLS client context that trusts our CA and presents certificate `name` (stdlib only: the servers' probes)."""
    context = ssl.create_default_context(cafile=str(ca_file()))
    context.load_cert_chain(str(cert_file(name)), str(key_file(name)))
    return context


def rotate_pki() -> bool:
    """Drop the CA and every certificate (servers down); the next ensure_pki issues new ones. False for your own PKI."""
    if own_pki():
        return False
    shutil.rmtree(pki_dir(), ignore_errors=True)
    return True


def describe() -> str:
    where = pki_dir()
    return str(where.relative_to(ROOT)) if where.is_relative_to(ROOT) else str(where)
