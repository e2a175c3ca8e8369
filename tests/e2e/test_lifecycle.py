"""The server process: SIGHUP reload, clean stops, one writer per database, PostgreSQL."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SERVER_TOML, RawClient, ServerProcess

EXTRA_MACHINE = """
[[machines]]
name = "spare"
tags = ["spare"]
single_board = {bmp_ip = "10.99.0.0", spinnaker_ip = "10.99.0.1"}
"""


def _wait_machine_announced(client: RawClient, name: str) -> None:
    """Read notifications until one says that machine `name` changed."""
    while name not in client.next_notification().get("machines_changed", ()):
        pass


def _replace(path: Path, text: str) -> None:
    """Replace a file atomically, as an operator's deployment tool should."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def test_sighup_reloads_and_rejects_a_bad_file_keeping_jobs(start_server: Any) -> None:
    server: ServerProcess = start_server()
    config_path = server.config_path
    watcher = RawClient(server.host, server.port)
    client = RawClient(server.host, server.port)
    try:
        job_id = client.call("create_job", 2, 1, owner="reload")
        client.wait_for_state(job_id, 3)
        watcher.call("notify_machine")

        # A bad file: rejected with the key and value named, the old configuration kept.
        _replace(config_path, SERVER_TOML + "\n[[machines]]\nname = 7\n")
        server.send_signal(signal.SIGHUP)
        rejected = server.wait_for_output("configuration rejected")
        assert "machines[1].name" in rejected
        assert [m["name"] for m in client.call("list_machines")] == ["spinn-1200"]

        # One marking dead a board the job holds: refused whole, board and job named.
        x, y, z = client.call("get_job_machine_info", job_id)["boards"][0]
        _replace(config_path, SERVER_TOML + f"dead_boards = [[{x}, {y}, {z}]]\n" + EXTRA_MACHINE)
        server.send_signal(signal.SIGHUP)
        line = f"board ({x}, {y}, {z}) of job {job_id} is not a live board of spinn-1200"
        assert line in server.wait_for_output(line)
        assert [m["name"] for m in client.call("list_machines")] == ["spinn-1200"]
        assert "Traceback" not in server.stderr_text

        # A good one adding a machine.
        _replace(config_path, SERVER_TOML + EXTRA_MACHINE)
        server.send_signal(signal.SIGHUP)
        _wait_machine_announced(watcher, "spare")
        names = [m["name"] for m in client.call("list_machines")]
        assert names == ["spinn-1200", "spare"]
        state = client.call("get_job_state", job_id)
        assert state["state"] == 3, f"a reload must not touch running jobs: {state}"
    finally:
        watcher.close()
        client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(start_server: Any, sig: int) -> None:
    server: ServerProcess = start_server()
    client = RawClient(server.host, server.port)
    job_id = client.call("create_job", owner="stop")
    client.close()
    assert server.stop(sig) == 0
    assert "stopping" in server.stderr_text
    # the job survives the stop
    restarted = server.restarted()
    try:
        again = RawClient(restarted.host, restarted.port)
        assert again.call("get_job_state", job_id)["state"] in (2, 3)
        again.close()
    finally:
        assert restarted.stop() == 0


def test_second_server_on_the_same_database_is_refused(start_server: Any, tmp_path: Path) -> None:
    first: ServerProcess = start_server(directory=tmp_path / "one")
    second = ServerProcess(first.config_path, first.db_url, tmp_path)
    with pytest.raises(AssertionError, match="exit code 2"):
        second.start()
    assert "in use by another allotment server" in second.stderr_text
    assert first.is_running()


def test_serves_spalloc_on_postgresql(start_server: Any, pg_url: str) -> None:
    server: ServerProcess = start_server(db_url=pg_url)
    client = RawClient(server.host, server.port)
    try:
        job_id = client.call("create_job", 2, owner="pg")
        state = client.wait_for_state(job_id, 3)
        assert state["power"] is True
        info = client.call("get_job_machine_info", job_id)
        assert len(info["boards"]) == 3
        client.call("destroy_job", job_id, "done")
        assert client.call("get_job_state", job_id)["reason"] == "done"
    finally:
        client.close()
    assert server.stop() == 0
    restarted = server.restarted()
    try:
        again = RawClient(restarted.host, restarted.port)
        assert again.call("get_job_state", job_id)["reason"] == "done"
        assert again.call("create_job", owner="pg") == job_id + 1
        again.close()
    finally:
        restarted.stop()
