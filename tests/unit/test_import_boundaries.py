"""What may import what (docs/DESIGN.md): pure modules touch no server and read no clock; connectors know no flow.

Checked on the source (AST), so a forbidden import fails here even when it sits in an untaken branch.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The per-event rules of each flow and the shared wire types: plain data in, plain data out.
PURE_MODULES = sorted(
    [
        *REPO.glob("schemas/*.py"),
        *(REPO / "dataflows" / flow / f"{name}.py" for flow, name in [
            ("search_sync", "parts"),
            ("search_sync", "views"),
            ("search_sync", "renames"),
            ("inbox_mirror", "rules"),
            ("room_worker", "commands"),
            ("room_worker", "plans"),
            ("room_worker", "events"),
            ("room_worker", "outcomes"),
            ("room_worker", "handler"),
            ("room_worker", "updates"),
            ("room_worker", "store"),
        ]),
    ]
)
# Store and server clients, the stream processor, the environment and the clock.
FORBIDDEN_ROOTS = frozenset(
    {"pymongo", "bson", "motor", "elasticsearch", "elastic_transport", "nats", "bytewax", "prometheus_client",
     "connectors", "os", "time", "random", "secrets", "socket", "asyncio", "threading", "subprocess", "uuid_utils"}
)
# Calls that read the clock or draw randomness through an otherwise harmless module.
FORBIDDEN_CALLS = frozenset({"now", "utcnow", "today", "uuid1", "uuid4", "uuid6", "uuid7"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PURE_NAMES = frozenset(_module_name(path) for path in PURE_MODULES)


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from schemas import subjects` imports the module schemas.subjects
                yield node.lineno, f"{node.module}.{alias.name}"


def _is_project(name: str) -> bool:
    return name.split(".")[0] in {"schemas", "dataflows", "connectors", "chatfed_cli", "testkit", "tests", "bench"}


def boundary_problems(path: Path) -> list[str]:
    """Why `path` is not pure: forbidden imports, impure project imports, clock or random calls."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    problems = []
    for line, name in _imports(tree):
        if name.split(".")[0] in FORBIDDEN_ROOTS:
            problems.append(f"{where}:{line} imports {name}")
        elif _is_project(name) and name.startswith("dataflows.") and name not in PURE_NAMES:
            # `from dataflows.x import views` yields both "dataflows.x" (a package) and "dataflows.x.views"
            if (REPO / Path(*name.split("."))).with_suffix(".py").exists():
                problems.append(f"{where}:{line} imports {name}, which is not a pure module")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_CALLS:
            problems.append(f"{where}:{node.lineno} calls .{node.func.attr}() (clock or randomness)")
    return problems


def test_the_pure_modules_exist() -> None:
    missing = [str(path.relative_to(REPO)) for path in PURE_MODULES if not path.exists()]
    assert not missing, f"listed as pure but absent: {missing}"


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda path: str(path.relative_to(REPO)))
def test_pure_module_imports_no_client_and_reads_no_clock(path: Path) -> None:
    assert boundary_problems(path) == []


@pytest.mark.parametrize("path", sorted(REPO.glob("connectors/*.py")), ids=lambda path: path.name)
def test_connectors_know_no_flow(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    flows = [f"{path.name}:{line} imports {name}" for line, name in _imports(tree) if name.split(".")[0] == "dataflows"]
    assert flows == []


@pytest.mark.parametrize("path", sorted(REPO.glob("bench/*.py")), ids=lambda path: path.name)
def test_benchmarks_do_not_import_tests(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert [name for _, name in _imports(tree) if name.split(".")[0] == "tests"] == []


def test_the_check_catches_a_store_client(tmp_path: Path) -> None:
    """The guard itself: a rules module that imports pymongo and reads the clock is reported."""
    bad = tmp_path / "rules.py"
    bad.write_text("import pymongo\nfrom datetime import datetime\nfrom connectors import mongo\nNOW = datetime.now()\n")
    problems = boundary_problems(bad)
    assert [p.split(" ", 1)[1] for p in problems] == ["imports pymongo", "imports connectors", "imports connectors.mongo", "calls .now() (clock or randomness)"]
