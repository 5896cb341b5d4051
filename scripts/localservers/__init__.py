"""chatfed's local servers, split by concern; `scripts/services.py` is the command line over them.

  layout       sites, ports, overrides (from the environment) and where the files live
  credentials  the users and passwords of NATS, Elasticsearch and FerretDB (0600 files)
  pki          the private CA and every server's and link's certificate
  permissions  what a site's service and leaf users may do, built from schemas/subjects.py
  natsconf     the NATS config files: accounts, users, TLS, leafnode remotes
  esconf       Elasticsearch's own config folder: security, TLS, roles and users
  processes    probes (tcp, http) and /proc lookups
  servers      each server: how to start it and tell it is ready
  lifecycle    start, adopt, wait for the leafnodes, terminate
  commands     up, down, release, status, info, rotate-secrets, tls

Standard library only, plus the checkout's stdlib-only `schemas.names` and `schemas.subjects`: this runs
under a bare python3 before the venv exists. Issuing certificates (pki) imports the venv's `cryptography`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `schemas` lives at the checkout's root, which is not on sys.path when python runs scripts/services.py
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)
