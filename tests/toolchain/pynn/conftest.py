"""Fixtures of the PyNN backend's tests: a clean working directory and home per test.

The backend writes ``./reports/`` and reads ``./spynnaker.cfg`` and ``~/.spynnaker.cfg``,
so each test runs in a directory of its own with a home of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory and home for a script."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sim(workdir: Path) -> Iterator[ModuleType]:
    """The backend, as a script imports it; ended after the test."""
    import allotment.pynn as backend

    yield backend
    backend.end()
