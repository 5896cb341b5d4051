"""Where each site's servers are: `scripts/services.py info`, or a JSON file named by CHATFED_INFO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from connectors.settings import NatsSettings

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


    def operator(self) -> NatsSettings:
        """How the CLI connects: as the site's operator."""
        return NatsSettings(url=self.nats_url, user=self.nats_user, password=self.nats_password, creds=self.nats_creds)


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    sites: dict[str, SiteInfo]
    mongo_uri: str
    es_url: str

    @property
    def site_ids(self) -> list[str]:
        return list(self.sites)


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
    return msgspec.convert(raw, Topology)
