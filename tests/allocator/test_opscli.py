"""Operator subcommands against a fake client that binds every call like the server would."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from allocator.opscli import TOKEN_ENV, _parse_for_tests, run_command
from protocol.admin import (
    AdminSetLinkServiceArgs,
    AuditLogArgs,
    OperatorTokenError,
    check_operator_token,
)
from protocol.commands import bind
from protocol.errors import CommandError, ServerError
from protocol.events import BoardState

_AUDIT = {
    "audit_id": 3, "timestamp_s": 0.0, "operator": "ops", "peer": "127.0.0.1",
    "action": "admin_set_board_service", "target": "spin5 board (1, 2, 0)", "reason": "fan",
}  # fmt: skip
_BOARDS = [
    {"x": 0, "y": 0, "z": z, "cabinet": 0, "frame": 0, "board": z, "state": s, "job_id": j}
    for z, s, j in ((0, "allocated", 4), (1, "dead", None), (2, "free", None))
]


class FakeClient:
    """Checks each call against the command table, then answers from `replies`."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, Any]] = []

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        bound = bind(command, args, kwargs)
        self.calls.append((command, bound))
        reply = self.replies[command]
        if isinstance(reply, Exception):
            raise reply
        return reply


async def _run(argv: list[str], client: FakeClient) -> tuple[int, str]:
    out = io.StringIO()
    status = await run_command(_parse_for_tests(argv), client, out)
    return status, out.getvalue()


async def test_board_out_sends_token_reason_and_prints_audit() -> None:
    client = FakeClient({"admin_set_board_service": _AUDIT})
    argv = ["board", "out", "spin5", "1", "2", "0", "--reason", "fan", "--token", "t0k"]
    status, text = await _run([*argv, "--operator", "ops"], client)
    assert status == 0
    ((command, bound),) = client.calls
    assert command == "admin_set_board_service"
    assert bound.model_dump() == {
        "token": "t0k", "machine": "spin5", "x": 1, "y": 2, "z": 0, "in_service": False,
        "reason": "fan", "operator": "ops",
    }  # fmt: skip
    assert "#3" in text
    assert "ops@127.0.0.1 admin_set_board_service spin5 board (1, 2, 0): fan" in text


async def test_link_accepts_direction_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    client = FakeClient({"admin_set_link_service": _AUDIT})
    status, _ = await _run(
        ["link", "in", "spin5", "1", "2", "0", "SW", "--reason", "fixed"], client
    )
    assert status == 0
    bound = client.calls[0][1]
    assert isinstance(bound, AdminSetLinkServiceArgs)
    assert (bound.link, bound.in_service, bound.token) == (4, True, "from-env")


async def test_admin_command_without_token_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    client = FakeClient({})
    status, text = await _run(["drain", "spin5", "--reason", "maintenance"], client)
    assert status == 2
    assert TOKEN_ENV in text
    assert client.calls == []


async def test_server_refusal_is_reported_not_raised() -> None:
    refusal = ServerError("admin_destroy_job needs a valid operator token")
    client = FakeClient({"admin_destroy_job": refusal})
    status, text = await _run(["destroy", "7", "--reason", "runaway", "--token", "bad"], client)
    assert status == 1
    assert "needs a valid operator token" in text


async def test_audit_lists_entries() -> None:
    client = FakeClient({"admin_audit_log": [_AUDIT, {**_AUDIT, "audit_id": 2}]})
    status, text = await _run(["audit", "--limit", "2", "--token", "t"], client)
    assert status == 0
    assert client.calls[0][1] == AuditLogArgs(token="t", limit=2)
    assert [line.split()[0] for line in text.splitlines()] == ["#3", "#2"]


async def test_map_text_and_png(tmp_path: Path) -> None:
    state = {"name": "spin5", "width": 1, "height": 1, "boards": _BOARDS}
    client = FakeClient({"admin_machine_state": state})
    status, text = await _run(["map", "spin5", "--no-colour"], client)
    assert status == 0
    assert "  c0 f0 AX." in text
    png = tmp_path / "map.png"
    status, text = await _run(["map", "spin5", "--png", str(png)], client)
    assert status == 0
    assert Image.open(png).format == "PNG"
    nowhere = tmp_path / "no-such-folder" / "map.png"
    with pytest.raises(SystemExit, match=f"allotment: error: cannot write {nowhere}: "):
        await _run(["map", "spin5", "--png", str(nowhere)], client)


async def test_ps_filters_by_owner() -> None:
    job = {
        "job_id": 4, "owner": "alice", "start_time": 0.0, "keepalive": 60.0, "state": 3,
        "power": True, "args": [1], "kwargs": {}, "allocated_machine_name": "spin5",
        "boards": [[0, 0, 0]], "keepalivehost": "10.0.0.9",
    }  # fmt: skip
    client = FakeClient({"list_jobs": [job, {**job, "job_id": 5, "owner": "bob"}]})
    status, text = await _run(["ps", "--owner", "alice"], client)
    assert status == 0
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "State", "Power", "Boards", "Machine", "Created", "at",
                                "Keepalive", "Owner"]  # fmt: skip
    assert len(lines) == 2
    assert lines[1].split()[:5] == ["4", "ready", "on", "1", "spin5"]
    assert lines[1].endswith("alice (10.0.0.9)")


async def test_where_is_nothing_there_exits_4() -> None:
    client = FakeClient({"where_is": None})
    status, text = await _run(["where-is", "--physical", "spin5", "0", "0", "30"], client)
    assert (status, text) == (4, "no boards at the specified location\n")


async def test_where_is_prints_the_location() -> None:
    reply = {
        "machine": "spin5", "logical": [1, 0, 0], "physical": [1, 0, 0], "chip": [12, 0],
        "board_chip": [0, 0], "job_id": 4, "job_chip": [0, 0],
    }  # fmt: skip
    client = FakeClient({"where_is": reply})
    status, text = await _run(["where-is", "--board", "spin5", "1", "0", "0"], client)
    assert status == 0
    assert "Physical location: cabinet 1, frame 0, board 0" in text
    assert "Job using board: 4" in text


def test_token_check() -> None:
    check_operator_token("admin_drain_machine", "s3cret", "s3cret")
    with pytest.raises(OperatorTokenError, match="admin_drain_machine needs a valid"):
        check_operator_token("admin_drain_machine", "wrong", "s3cret")
    with pytest.raises(OperatorTokenError, match="no operator token configured"):
        check_operator_token("admin_drain_machine", "s3cret", "")


def test_admin_binding_rejects_bad_link_and_limit() -> None:
    with pytest.raises(CommandError, match=r"link 0\.\.5, not 6"):
        bind("admin_set_link_service", ["t", "m", 0, 0, 0, 6, False, "r"], {})
    with pytest.raises(CommandError, match=r"'limit' must be in 1\.\.10000"):
        bind("admin_audit_log", ["t", 0], {})
    with pytest.raises(CommandError, match="missing 1 required positional argument: 'reason'"):
        bind("admin_drain_machine", ["t", "m"], {})
    assert BoardState("dead") is BoardState.DEAD


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path: Path) -> None:
    # `allotment jobs | head` ended in a BrokenPipeError traceback.
    script = (
        "import argparse, sys\n"
        "import allocator.cli as cli\n"
        "def build():\n"
        "    parser = argparse.ArgumentParser()\n"
        "    commands = parser.add_subparsers(dest='command')\n"
        "    lots = commands.add_parser('lots')\n"
        "    lots.set_defaults(handler=lambda args: [print(n) for n in range(200000)] and 0)\n"
        "    return parser\n"
        "cli._build_parser = build\n"
        "sys.exit(cli.main(['lots']))\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"0\n"
    writer.stdout.close()  # as `head -1` does
    _, said = writer.communicate(timeout=60)
    assert writer.returncode == 1
    assert b"Traceback" not in said, said.decode()
