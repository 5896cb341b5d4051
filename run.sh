#!/usr/bin/env bash
# chatfed's single entry point for developers and CI: ./run.sh <command> [args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PY=.venv/bin/python
[[ -x $PY ]] || PY=python3  # services.py is stdlib only: down/status/info work before install

usage() {
  cat <<'USAGE'
usage: ./run.sh [--keep]               the main job: two federated sites end to end (--keep: leave them running)
       ./run.sh <command> [args]
  install                       install the venv, Elasticsearch and FerretDB under .venv/ and .local/
  services up|down|status|info  manage the local servers (down --purge also deletes their data)
  services rotate-secrets       new passwords, CA and certificates (servers down; see README, Security model)
  test [pytest args]            install, start the servers, run pytest, stop the servers it started
  bootstrap                     create or update every site's streams, sources and consumers
  flows up|down|status          run the three dataflows of every site in the background
  cli ARGS...                   the operator CLI (`./run.sh cli --help`)
USAGE
}

services() {
  if [[ ${1:-} == up ]]; then bash scripts/install.sh; PY=.venv/bin/python; fi
  "$PY" scripts/services.py "$@"
}

run_tests() {
  bash scripts/install.sh
  PY=.venv/bin/python
  local rc=0
  # Stop what this run started once the tests pass, fail or are interrupted, unless another
  # ./run.sh test in this checkout still uses the servers (services.py release).
  trap '"$PY" scripts/services.py release $$ >/dev/null' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  "$PY" scripts/services.py up --lease $$
  "$PY" -m pytest -q "$@" || rc=$?
  return "$rc"
}

# The main job: a two-site federation end to end (issue 6). Stops what it started unless --keep.
main_job() {
  local keep=${1:-} rc=0
  bash scripts/install.sh
  if [[ $keep != --keep ]]; then
    # stop the flows, and the servers unless another run (or you) still uses them: services.py release
    trap '.venv/bin/chatfed flows down >/dev/null || true; .venv/bin/python scripts/services.py release $$ >/dev/null' EXIT
  fi
  if [[ $keep == --keep ]]; then
    .venv/bin/python scripts/services.py up
  else
    .venv/bin/python scripts/services.py up --lease $$
  fi
  .venv/bin/chatfed flows up
  .venv/bin/chatfed demo || rc=$?
  if [[ $keep == --keep ]]; then
    echo "servers and flows keep running: ./run.sh cli status; stop with ./run.sh flows down && ./run.sh services down"
  fi
  return "$rc"
}

case "${1:-}" in
  install) bash scripts/install.sh ;;
  services) shift; services "$@" ;;
  test) shift; run_tests "$@" ;;
  bootstrap) shift; bash scripts/install.sh; .venv/bin/chatfed bootstrap "$@" ;;
  flows) shift; bash scripts/install.sh; .venv/bin/chatfed flows "$@" ;;
  cli) shift; bash scripts/install.sh; .venv/bin/chatfed "$@" ;;
  ""|--keep) main_job "${1:-}" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
