#!/usr/bin/env python3
"""Start, stop and describe chatfed's local servers: a NATS hub, one JetStream NATS per site, ES, FerretDB (and
the PostgreSQL it stores in, unless CHATFED_MONGO_BACKEND=sqlite).

Usage: services.py up [--lease PID] | down [--purge] [NAME...] | start NAME... | status | info | release PID | rotate-secrets | tls
  `up --lease` and `release` serve ./run.sh test: the last run to release stops what the runs started.
  `start` starts only the named servers (an outage test brings back the one it stopped). `status` exits 3
  when a server is not running. `info` includes each site's NATS operator and service credentials.
  `rotate-secrets` replaces the passwords, the CA and every certificate (servers down). `tls` creates the CA and
  certificates if missing (install runs it).

Everything lives under the git-ignored .local/: data/<server>, logs/<server>.log, run/<server>.pid,
conf/<server>.conf, secrets/nats-<site|hub>.json (NATS users and passwords, 0600, generated at the
first up), secrets/tls/ (the private CA and every certificate, keys 0600). Standard library only (the code is in
scripts/localservers/), except that issuing certificates needs the venv's `cryptography`. Environment:
  CHATFED_SITES          space-separated site ids (default "s1 s2")
  CHATFED_PORT_BASE      NATS: hub base+0, hub leafnodes base+1, hub monitor base+2,
                         site i client base+10+i, site i monitor base+30+i (default 14220)
  CHATFED_ES_PORT        Elasticsearch http port (default 19200; transport port +100)
  CHATFED_FERRET_PORT    FerretDB port (default 37017; debug port +1; its PostgreSQL's unix socket is named +2)
  CHATFED_MONGO_BACKEND  FerretDB's storage: postgresql (default: a private cluster in data/postgres,
                         reached through the socket in run/postgres) or sqlite (files in data/ferretdb/sqlite)
  CHATFED_STATE_DIR      instead of .local/ for data, logs, run, conf, secrets (a private set of servers)
  CHATFED_MONGO_URI (or MONGO_URI), CHATFED_ES_URL, CHATFED_NATS_URL_<SITE>
                         use an existing server instead of starting one
  CHATFED_PKI_DIR        your own CA and certificates (same file names as secrets/tls/) instead of generated ones
"""

from __future__ import annotations

import fcntl
import os
import sys

from localservers.commands import cmd_down, cmd_info, cmd_release, cmd_rotate_secrets, cmd_start, cmd_status, cmd_tls, cmd_up
from localservers.layout import RUN, ServiceError, load_layout


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    lease = args[1] if args[:1] == ["--lease"] and len(args) == 2 else None
    valid = {
        "up": not args or (lease or "").isdigit(),
        "down": True,
        "start": bool(args),
        "status": not args,
        "info": not args,
        "release": len(args) == 1 and args[0].isdigit(),
        "rotate-secrets": not args,
        "tls": not args,
    }
    if not valid.get(command, False):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        layout = load_layout(dict(os.environ))
        if command == "status":
            return cmd_status(layout)
        if command == "info":
            return cmd_info(layout)
        RUN.mkdir(parents=True, exist_ok=True)
        with (RUN / "services.lock").open("w") as lock:
            # one up/down/start/release at a time: concurrent test runs share this checkout's servers
            fcntl.flock(lock, fcntl.LOCK_EX)
            if command == "up":
                cmd_up(layout, lease)
            elif command == "down":
                cmd_down(layout, [a for a in args if a != "--purge"], purge="--purge" in args)
            elif command == "start":
                cmd_start(layout, args)
            elif command == "rotate-secrets":
                cmd_rotate_secrets(layout)
            elif command == "tls":
                cmd_tls(layout)
            else:
                cmd_release(layout, args[0])
    except ServiceError as exc:
        print(f"services: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
