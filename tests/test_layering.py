"""The dependency rules of the architecture, checked on every import of every module.

| package          | may import                                                  |
|------------------|-------------------------------------------------------------|
| protocol         | stdlib, pydantic, anyio                                     |
| machine_models   | stdlib, numpy, numba                                        |
| allocator        | protocol, machine_models, its own third-party libraries;    |
|                  | SQLAlchemy only inside allocator/store/                     |
| toolchain        | protocol, machine_models, numpy; PyNN, neo, quantities and  |
|                  | tqdm for the PyNN backend (toolchain/pynn/)                 |
| allotment        | toolchain (the users' short import names)                   |
| jobqueue         | protocol, toolchain, its web/HTTP and database stack        |
|                  | (never allocator; allocator/cli.py may import jobqueue)     |
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"protocol", "machine_models", "allocator", "toolchain", "allotment", "jobqueue"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

ALLOWED_THIRD_PARTY = {
    "protocol": {"pydantic", "anyio"},
    "machine_models": {"numpy", "numba"},
    "allocator": {
        "pydantic",
        "anyio",
        "numpy",
        "sqlalchemy",
        "asyncpg",
        "prometheus_client",
        "aiomqtt",
        "paho",
        "PIL",
        "uvloop",
    },
    "toolchain": {"numpy", "numba", "pydantic", "pyNN", "neo", "quantities", "tqdm"},
    "allotment": set(),
    "jobqueue": {"pydantic", "anyio", "fastapi", "starlette", "uvicorn", "sqlalchemy"},
}
ALLOWED_OURS = {
    "protocol": {"protocol"},
    "machine_models": {"machine_models"},
    "allocator": {"allocator", "protocol", "machine_models"},
    "toolchain": {"toolchain", "protocol", "machine_models"},
    "allotment": {"allotment", "toolchain"},
    "jobqueue": {"jobqueue", "protocol", "toolchain"},
}
# The CLI starts the batch service: the one edge from allocator to jobqueue.
ALLOWED_FILE_EDGES = {("allocator/cli.py", "jobqueue")}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _violations() -> list[str]:
    bad = []
    for package in sorted(OURS):
        for path in sorted((ROOT / package).rglob("*.py")):
            in_store = (ROOT / "allocator" / "store") in path.parents
            relative = path.relative_to(ROOT).as_posix()
            for lineno, name in _imports(path):
                top = name.split(".")[0]
                where = f"{path.relative_to(ROOT)}:{lineno} imports {name}"
                if top in STDLIB:
                    continue
                if top in OURS:
                    if (
                        top not in ALLOWED_OURS[package]
                        and (relative, top) not in ALLOWED_FILE_EDGES
                    ):
                        bad.append(where)
                elif top not in ALLOWED_THIRD_PARTY[package]:
                    bad.append(where)
                elif top == "sqlalchemy" and package == "allocator" and not in_store:
                    bad.append(where + " (SQLAlchemy belongs in allocator/store/)")
    return bad


def test_every_import_follows_the_dependency_rules() -> None:
    assert _violations() == []


def test_the_check_catches_a_forbidden_edge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A protocol module importing the allocator must be reported.
    fake_root = tmp_path
    for package in OURS:
        (fake_root / package).mkdir()
    (fake_root / "protocol" / "bad.py").write_text("from allocator import service\n")
    (fake_root / "allocator" / "leaky.py").write_text("import sqlalchemy\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert _violations() == [
        "allocator/leaky.py:1 imports sqlalchemy (SQLAlchemy belongs in allocator/store/)",
        "protocol/bad.py:1 imports allocator",
    ]
