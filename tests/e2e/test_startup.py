"""Start-up errors of `allotment serve` and the operator commands, as a user meets them.

Each refusal is one line `allotment: cannot start: ...` naming the address (or file),
exit status 2, no traceback, and no database file left behind; a port outside 0-65535 is
refused by the argument parser.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, write_server_config

TIMEOUT_S = 60


def _allotment(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "allocator.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _assert_refused(result: subprocess.CompletedProcess[str], *facts: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("allotment: cannot start: "), lines[0]
    for fact in facts:
        assert fact in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line_naming_the_address(tmp_path: Path, busy_port: int) -> None:
    result = _allotment("serve", "--port", str(busy_port), cwd=tmp_path)
    _assert_refused(result, f"127.0.0.1:{busy_port}", "address already in use")
    assert list(tmp_path.iterdir()) == [], "a failed start left files behind"


def test_a_batch_port_in_use_is_one_line_naming_it_and_nothing_is_made(
    tmp_path: Path, busy_port: int
) -> None:
    result = _allotment("serve", "--port", "0", "--batch-port", str(busy_port), cwd=tmp_path)
    _assert_refused(result, f"127.0.0.1:{busy_port} (the batch service)", "address already in use")
    assert list(tmp_path.iterdir()) == [], "a failed start left files behind"


@pytest.mark.parametrize(
    ("host", "why"),
    [("192.0.2.1", "cannot assign requested address"), ("no-such-host.invalid", "")],
)
def test_a_host_that_cannot_be_bound_is_one_line_naming_it(
    tmp_path: Path, host: str, why: str
) -> None:
    result = _allotment("serve", "--host", host, "--port", "0", cwd=tmp_path)
    _assert_refused(result, f"cannot listen on {host}:0", why)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["-1", "65536", "70000", "http"])
@pytest.mark.parametrize("command", ["serve", "ps"])
def test_ports_outside_the_range_are_refused_by_the_parser(
    tmp_path: Path, command: str, port: str
) -> None:
    result = _allotment(command, "--port", port, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "is not a port number" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_config_without_machines_is_refused(tmp_path: Path) -> None:
    config = write_server_config(tmp_path / "conf", "[server]\nkeepalive_check_s = 1.0\n")
    result = _allotment("serve", "--port", "0", "--config", str(config), cwd=tmp_path)
    _assert_refused(result, str(config), "no [[machines]]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
