"""Where each site's servers are: `scripts/services.py info`, or a JSON file named by CHATFED_INFO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from connectors.settings import ElasticSettings, MongoSettings, NatsSettings

REPO = Path(__file__).resolve().parents[1]


class SiteInfo(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str
    mongo_db: str
    domain: str
    nats_user: str = ""  # the site's operator: manages its own site
    nats_password: str = ""
    nats_creds: str = ""
    service_user: str = ""  # what the flows connect as: only the subjects they use
    service_password: str = ""
    tls_ca: str = ""  # the CA of the site's NATS (the topology's `tls_ca` unless the site names its own)
    tls_cert: str = ""  # the site's client certificate: every NATS port of ours verifies one
    tls_key: str = ""
    es_service_user: str = ""  # the site's search_sync user on Elasticsearch: its own search views only
    es_service_password: str = ""

    def operator(self) -> NatsSettings:
        """How the CLI connects: as the site's operator."""
        return self._nats(self.nats_user, self.nats_password, self.nats_creds)

    def service(self) -> NatsSettings:
        """How the site's flows connect."""
        return self._nats(self.service_user, self.service_password, self.nats_creds)

    def _nats(self, user: str, password: str, creds: str) -> NatsSettings:
        return NatsSettings(
            url=self.nats_url, user=user, password=password, creds=creds, tls_ca=self.tls_ca, tls_cert=self.tls_cert, tls_key=self.tls_key
        )


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    sites: dict[str, SiteInfo]
    mongo_uri: str
    es_url: str
    tls_ca: str = ""
    mongo_user: str = ""  # the store's user: the flows and the CLI alike
    mongo_password: str = ""
    mongo_tls_ca: str = ""
    es_user: str = ""  # Elasticsearch's operator: the CLI, bootstrap, rebuild
    es_password: str = ""
    es_ca: str = ""  # the CA of Elasticsearch's certificate (default: tls_ca)

    @property
    def site_ids(self) -> list[str]:
        return list(self.sites)

    def mongo(self, site: str) -> MongoSettings:
        """`site`'s database on the MongoDB server."""
        return MongoSettings(
            uri=self.mongo_uri, database=self.sites[site].mongo_db, username=self.mongo_user, password=self.mongo_password, tls_ca_file=self.mongo_tls_ca
        )

    def elastic(self) -> ElasticSettings:
        """Elasticsearch as its operator."""
        return ElasticSettings(url=self.es_url, username=self.es_user, password=self.es_password, ca_certs=self.es_ca or self.tls_ca)

    def search_sync_elastic(self, site: str) -> ElasticSettings:
        """How `site`'s search_sync reaches Elasticsearch: its own user, or the operator where it has none."""
        info = self.sites[site]
        if not info.es_service_user:
            return self.elastic()
        return msgspec.structs.replace(self.elastic(), username=info.es_service_user, password=info.es_service_password)


def topology_of(raw: Any) -> Topology:
    """The `services.py info` JSON (a dict) as a Topology; each site inherits the top-level `tls_ca`."""
    topology = msgspec.convert(raw, Topology)
    sites = {s: msgspec.structs.replace(i, tls_ca=i.tls_ca or topology.tls_ca) for s, i in topology.sites.items()}
    return msgspec.structs.replace(topology, sites=sites)


def load_topology() -> Topology:
    """The servers of every configured site."""
    path = os.environ.get("CHATFED_INFO", "")
    raw: Any
    if path:
        raw = json.loads(Path(path).read_text())
    else:
        out = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "services.py"), "info"], check=True, capture_output=True, text=True
        )
        raw = json.loads(out.stdout)
    return topology_of(raw)
