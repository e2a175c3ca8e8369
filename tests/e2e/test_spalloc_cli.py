"""The real spalloc command-line tools (1!7.4.1 and 1!7.0.0) against a running allotment server.

Every tool runs as a subprocess, without `--ignore_version`, in a directory whose `.spalloc`
file names the owner (and, for some calls, the server), with a private home directory so that
no user configuration leaks in. Each test checks the exit code and the key lines of output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import MACHINE_NAME, RawClient, ServerProcess, run_python

OWNER = "cli@example.org"


def _tool_code(module: str) -> str:
    """Python code that runs one tool's `main` as its console script does."""
    return f"import sys; from spalloc_client.scripts.{module} import main; sys.exit(main())"


@pytest.fixture
def workdir(tmp_path: Path, shared_server: ServerProcess) -> Path:
    """A directory with a `.spalloc` naming the server and owner, and an empty home."""
    (tmp_path / "home").mkdir()
    (tmp_path / ".spalloc").write_text(
        "[spalloc]\n"
        f"hostname = {shared_server.host}\n"
        f"port = {shared_server.port}\n"
        f"owner = {OWNER}\n"
        "keepalive = 60.0\n"
    )
    return tmp_path


def _run(
    module: str,
    args: list[str],
    version: str,
    workdir: Path,
    stdin_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_python(
        _tool_code(module),
        args,
        version,
        cwd=workdir,
        home=workdir / "home",
        stdin_text=stdin_text,
    )


def _server_flags(server: ServerProcess) -> list[str]:
    return ["--hostname", server.host, "--port", str(server.port)]


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _definitions(text: str) -> dict[str, str]:
    """Parse a right-aligned definition list ("    Key: value") into a dict."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Z][A-Za-z \-]*?): (.*)$", line)
        if match:
            found.setdefault(match.group(1).strip(), match.group(2).strip())
    return found


@pytest.fixture
def live_job(shared_server: ServerProcess) -> Iterator[tuple[RawClient, int]]:
    """A ready two-triad job of the CLI owner, destroyed after the test."""
    client = RawClient(shared_server.host, shared_server.port)
    job_id = client.call("create_job", 2, 1, owner=OWNER, keepalive=60.0)
    assert isinstance(job_id, int)
    client.wait_for_state(job_id, 3)
    yield client, job_id
    client.call("destroy_job", job_id, "test over")
    client.close()


def test_spalloc_runs_command(
    client_version: str, workdir: Path, shared_server: ServerProcess
) -> None:
    result = _run(
        "alloc",
        [
            "-q",
            *_server_flags(shared_server),
            "1",
            "1",
            "--command",
            "echo",
            "RESULT",
            "{hostname}",
            "{w}",
            "{h}",
            "{id}",
        ],
        client_version,
        workdir,
    )
    assert result.returncode == 0, _explain(result)
    match = re.search(r"^RESULT (\S+) (\d+) (\d+) (\d+)$", result.stdout, re.MULTILINE)
    assert match, _explain(result)
    assert (match.group(2), match.group(3)) == ("16", "16")
    job_id = int(match.group(4))
    client = RawClient(shared_server.host, shared_server.port)
    try:
        assert client.call("get_job_state", job_id)["state"] == 4, "spalloc left its job alive"
    finally:
        client.close()


def test_spalloc_prints_info_and_releases_on_enter(
    client_version: str, workdir: Path, shared_server: ServerProcess
) -> None:
    result = _run("alloc", ["--keepalive", "60"], client_version, workdir, stdin_text="\n")
    assert result.returncode == 0, _explain(result)
    info = _definitions(result.stdout)
    assert info.get("Width") == "8", _explain(result)
    assert info.get("Height") == "8", _explain(result)
    assert info.get("Running on") == MACHINE_NAME, _explain(result)
    assert info.get("Hostname"), _explain(result)
    ready = re.search(r"Job (\d+): Ready!", result.stderr)
    assert ready, _explain(result)
    client = RawClient(shared_server.host, shared_server.port)
    try:
        assert client.call("get_job_state", int(ready.group(1)))["state"] == 4
    finally:
        client.close()


def test_spalloc_ps_lists_the_job(
    client_version: str,
    workdir: Path,
    shared_server: ServerProcess,
    live_job: tuple[RawClient, int],
) -> None:
    _, job_id = live_job
    result = _run("ps", _server_flags(shared_server), client_version, workdir)
    assert result.returncode == 0, _explain(result)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["ID", "State", "Power"], _explain(result)
    mine = [row for row in rows if row and row[0] == str(job_id)]
    assert len(mine) == 1, _explain(result)
    assert mine[0][1:5] == ["ready", "on", "6", MACHINE_NAME], _explain(result)
    assert OWNER in mine[0], _explain(result)

    owned = _run("ps", ["--owner", "nobody@example.org"], client_version, workdir)
    assert owned.returncode == 0, _explain(owned)
    assert not any(line.split()[:1] == [str(job_id)] for line in owned.stdout.splitlines())


def test_spalloc_machine_table_and_detail(
    client_version: str,
    workdir: Path,
    shared_server: ServerProcess,
    live_job: tuple[RawClient, int],
) -> None:
    result = _run("machine", _server_flags(shared_server), client_version, workdir)
    assert result.returncode == 0, _explain(result)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][:2] == ["Name", "Num"], _explain(result)
    big = [row for row in rows if row and row[0] == MACHINE_NAME]
    assert len(big) == 1, _explain(result)
    assert big[0][1] == "1200", _explain(result)
    assert "default" in big[0], _explain(result)

    detail = _run("machine", [MACHINE_NAME], client_version, workdir)
    assert detail.returncode == 0, _explain(detail)
    info = _definitions(detail.stdout)
    assert info.get("Name") == MACHINE_NAME, _explain(detail)
    in_use = re.fullmatch(r"(\d+) of 1200", info.get("In-use", ""))
    assert in_use, _explain(detail)
    assert int(in_use.group(1)) >= 6, _explain(detail)
    _, job_id = live_job
    assert re.search(rf"\b{job_id}\b", detail.stdout), _explain(detail)


def test_spalloc_job_info_power_and_destroy(
    client_version: str, workdir: Path, live_job: tuple[RawClient, int]
) -> None:
    client, job_id = live_job
    result = _run("job", [str(job_id), "--info"], client_version, workdir)
    assert result.returncode == 0, _explain(result)
    info = _definitions(result.stdout)
    assert info.get("Job ID") == str(job_id), _explain(result)
    assert info.get("Owner") == OWNER, _explain(result)
    assert info.get("State") == "ready", _explain(result)
    assert info.get("Num boards") == "6", _explain(result)
    assert info.get("Running on") == MACHINE_NAME, _explain(result)
    assert info.get("Width") == "28", _explain(result)
    assert info.get("Height") == "16", _explain(result)

    powered = _run("job", [str(job_id), "--power-on"], client_version, workdir)
    assert powered.returncode == 0, _explain(powered)
    assert client.call("get_job_state", job_id)["power"] is True

    destroyed = _run("job", [str(job_id), "--destroy", "cli says bye"], client_version, workdir)
    assert destroyed.returncode == 0, _explain(destroyed)
    state = client.call("get_job_state", job_id)
    assert (state["state"], state["reason"]) == (4, "cli says bye"), state

    after = _run("job", [str(job_id)], client_version, workdir)
    assert after.returncode == 0, _explain(after)
    info = _definitions(after.stdout)
    assert info.get("State") == "destroyed", _explain(after)
    assert info.get("Reason") == "cli says bye", _explain(after)


def test_spalloc_where_is_job_chip(
    client_version: str, workdir: Path, live_job: tuple[RawClient, int]
) -> None:
    client, job_id = live_job
    origin = min(tuple(b) for b in client.call("get_job_machine_info", job_id)["boards"])
    result = _run("where_is", ["--job-chip", str(job_id), "0", "0"], client_version, workdir)
    assert result.returncode == 0, _explain(result)
    info = _definitions(result.stdout)
    assert info.get("Machine") == MACHINE_NAME, _explain(result)
    assert info.get("Board coordinate") == str(origin), _explain(result)
    assert info.get("Job using board") == str(job_id), _explain(result)
    assert info.get("Coordinates within job") == "(0, 0)", _explain(result)


@pytest.mark.parametrize(
    ("flag", "values", "board_chip"),
    [
        ("--board", [MACHINE_NAME, "1", "1", "1"], None),
        ("--physical", [MACHINE_NAME, "1", "0", "18"], None),
        ("--chip", [MACHINE_NAME, "21", "17"], "(1, 1)"),
    ],
)
def test_spalloc_where_is_machine_forms(
    spalloc_700_path: Path,
    workdir: Path,
    flag: str,
    values: list[str],
    board_chip: str | None,
) -> None:
    # 1!7.4.1 cannot send these forms at all (its `where_is` wrapper only takes a job id).
    result = _run("where_is", [flag, *values], "7.0.0", workdir)
    assert result.returncode == 0, _explain(result)
    info = _definitions(result.stdout)
    assert info.get("Physical location") == "Cabinet 1, Frame 0, Board 18", _explain(result)
    assert info.get("Board coordinate") == "(1, 1, 1)", _explain(result)
    assert info.get("Coordinates within board") == board_chip, _explain(result)


def test_spalloc_where_is_nothing_there(spalloc_700_path: Path, workdir: Path) -> None:
    result = _run("where_is", ["--board", "no-such-machine", "0", "0", "0"], "7.0.0", workdir)
    assert result.returncode == 4, _explain(result)
    assert "No boards at the specified location" in result.stdout + result.stderr
