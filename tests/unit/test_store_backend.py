"""CHATFED_MONGO_BACKEND picks FerretDB's storage; with PostgreSQL, its server starts first and FerretDB uses its socket."""

from __future__ import annotations

import pytest

from scripts.localservers.layout import DEFAULT_MONGO_BACKEND, MONGO_BACKENDS, ServiceError, load_layout
from scripts.localservers.servers import all_servers, pg_socket_dir


def _names(env: dict[str, str]) -> list[str]:
    return [s.name for s in all_servers(load_layout(env)) if not s.external]


def test_postgresql_starts_before_ferretdb_which_uses_its_socket() -> None:
    layout = load_layout({"CHATFED_MONGO_BACKEND": "postgresql", "CHATFED_FERRET_PORT": "40017"})
    servers = {s.name: s for s in all_servers(layout)}
    assert list(servers).index("postgres") == list(servers).index("ferretdb") - 1
    assert servers["postgres"].port is None  # a unix socket only
    argv = servers["ferretdb"].argv()
    assert "--handler=postgresql" in argv
    assert f"--postgresql-url=postgresql://postgres@/ferretdb?host={pg_socket_dir()}&port=40019" in argv
    # the same login and socket as on SQLite: no TCP listener, a SCRAM user created at the first start
    assert "--listen-addr=" in argv and f"--listen-unix={layout.ferret_socket}" in argv
    assert "--test-enable-new-auth" in argv and any(a.startswith("--setup-username=") for a in argv)
    assert "FERRETDB_SETUP_PASSWORD" in servers["ferretdb"].env


@pytest.mark.parametrize(
    ("env", "has_postgres"),
    [
        ({"CHATFED_MONGO_BACKEND": "sqlite"}, False),
        ({"CHATFED_MONGO_BACKEND": "postgresql", "CHATFED_MONGO_URI": "mongodb://elsewhere:27017/"}, False),
        ({}, DEFAULT_MONGO_BACKEND == "postgresql"),
    ],
    ids=["sqlite", "external-mongodb", "default"],
)
def test_postgres_only_under_a_local_ferretdb_on_postgresql(env: dict[str, str], has_postgres: bool) -> None:
    assert ("postgres" in _names(env)) == has_postgres


def test_sqlite_backend_has_no_postgresql_flag() -> None:
    (ferret,) = [s for s in all_servers(load_layout({"CHATFED_MONGO_BACKEND": "sqlite"})) if s.name == "ferretdb"]
    assert "--handler=sqlite" in ferret.argv()


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ServiceError, match="CHATFED_MONGO_BACKEND"):
        load_layout({"CHATFED_MONGO_BACKEND": "mysql"})
    assert DEFAULT_MONGO_BACKEND in MONGO_BACKENDS
