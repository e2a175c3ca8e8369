"""The real spalloc client library (1!7.4.1 and 1!7.0.0) against a running allotment server.

Each scenario is a plain function of (host, port, owner) written against the API that both
client releases share, adapting where they differ (7.4.1 takes the timeout as the second
positional argument of `call` and of `create_job`, and its `where_is` wrapper only knows the
job form). 7.4.1 scenarios run in this process; 7.0.0 scenarios run in a subprocess that
imports this module with 7.0.0 first on `PYTHONPATH`, so both versions run the same code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import MACHINE_NAME, ServerProcess, run_python

WAIT_S = 10.0
NEVER_FITS = "Cancelled: No suitable machines available."


def _client_is_new() -> bool:
    """Whether the imported spalloc_client is a 7.4-style release (timeout positional)."""
    from spalloc_client._version import __version__

    return not __version__.endswith("7.0.0")


def _call(client: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """`ProtocolClient.call` with the calling convention of the imported release."""
    if _client_is_new():
        return client.call(name, WAIT_S, *args, **kwargs)
    return client.call(name, *args, timeout=WAIT_S, **kwargs)


def _create(client: Any, *args: Any, **kwargs: Any) -> int:
    """`ProtocolClient.create_job` with the calling convention of the imported release."""
    if _client_is_new():
        job_id = client.create_job(WAIT_S, *args, **kwargs)
    else:
        job_id = client.create_job(*args, timeout=WAIT_S, **kwargs)
    assert isinstance(job_id, int), f"create_job returned {job_id!r}"
    return job_id


def _where_is(client: Any, **kwargs: Any) -> Any:
    """`where_is` in any form, through the named wrapper where the release has it."""
    if not _client_is_new():
        return client.where_is(timeout=WAIT_S, **kwargs)
    if set(kwargs) == {"job_id", "chip_x", "chip_y"}:
        return client.where_is(timeout=WAIT_S, **kwargs)
    return _call(client, "where_is", **kwargs)


def _protocol_client(host: str, port: int) -> Any:
    from spalloc_client import ProtocolClient

    client = ProtocolClient(host, port, timeout=WAIT_S)
    client.connect(timeout=WAIT_S)
    return client


def _job(host: str, port: int, owner: str, *args: Any, **kwargs: Any) -> Any:
    from spalloc_client import Job

    kwargs.setdefault("keepalive", 60.0)
    return Job(
        *args,
        hostname=host,
        port=port,
        owner=owner,
        timeout=WAIT_S,
        reconnect_delay=1.0,
        config_filenames=[],
        **kwargs,
    )


def _wait_for_state(client: Any, job_id: int, wanted: set[int]) -> dict[str, Any]:
    """Wait (on notifications, no sleeping) until the job is in one of the wanted states."""
    client.notify_job(job_id, timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while True:
        state = client.get_job_state(job_id, timeout=WAIT_S)
        if state["state"] in wanted:
            return dict(state)
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"job {job_id} stuck in {state} waiting for {wanted}"
        client.wait_for_notification(timeout=remaining)


def _wait_until_gone(client: Any, job_id: int) -> None:
    """Wait until the job leaves list_jobs, without touching its keepalive."""
    client.notify_job(job_id, timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while any(job["job_id"] == job_id for job in client.list_jobs(timeout=WAIT_S)):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"job {job_id} still listed after {WAIT_S} s"
        client.wait_for_notification(timeout=remaining)


# ---------------------------------------------------------------------------------------------
# Scenarios (shared by both client versions)


def scenario_protocol_commands(host: str, port: int, owner: str) -> None:
    """Every command through `ProtocolClient`, with the reply shapes of spalloc v1."""
    client = _protocol_client(host, port)
    try:
        version = client.version(timeout=WAIT_S)
        parts = tuple(int(p) for p in version.split("."))
        assert (0, 1, 0) <= parts < (7, 0, 0), f"version {version!r} outside the clients' range"

        machines = client.list_machines(timeout=WAIT_S)
        by_name = {m["name"]: m for m in machines}
        big = by_name[MACHINE_NAME]
        assert (big["width"], big["height"]) == (20, 20)
        assert "default" in big["tags"]
        assert big["dead_boards"] == []
        assert big["dead_links"] == []

        job_id = _create(client, owner=owner, keepalive=60.0)
        state = _wait_for_state(client, job_id, {3})
        assert state["power"] is True
        assert state["reason"] is None
        assert state["keepalive"] == 60.0
        assert isinstance(state["start_time"], float)
        assert state["keepalivehost"] == "127.0.0.1"

        assert client.job_keepalive(job_id, timeout=WAIT_S) is None
        info = client.get_job_machine_info(job_id, timeout=WAIT_S)
        assert (info["width"], info["height"]) == (8, 8)
        assert info["machine_name"] == MACHINE_NAME
        assert len(info["boards"]) == 1
        assert [[0, 0], info["connections"][0][1]] == info["connections"][0]
        assert isinstance(info["connections"][0][1], str)

        assert client.power_off_job_boards(job_id, timeout=WAIT_S) is None
        state = _wait_for_state(client, job_id, {3})
        assert state["power"] is False
        assert client.power_on_job_boards(job_id, timeout=WAIT_S) is None
        state = _wait_for_state(client, job_id, {3})
        assert state["power"] is True

        listed = [j for j in client.list_jobs(timeout=WAIT_S) if j["job_id"] == job_id]
        assert len(listed) == 1, f"job {job_id} listed {len(listed)} times"
        job = listed[0]
        assert job["owner"] == owner
        assert job["allocated_machine_name"] == MACHINE_NAME
        assert job["boards"] == info["boards"]
        assert job["state"] == 3
        assert job["power"] is True
        assert job["args"] == []
        assert isinstance(job["kwargs"], dict)
        assert isinstance(job["keepalivehost"], str)

        assert client.get_board_position(MACHINE_NAME, 0, 0, 1, timeout=WAIT_S) == [0, 0, 16]
        assert client.get_board_position(MACHINE_NAME, 1, 1, 1, timeout=WAIT_S) == [1, 0, 18]
        assert client.get_board_at_position(MACHINE_NAME, 0, 0, 8, timeout=WAIT_S) == [0, 0, 2]
        assert client.get_board_position("no-such-machine", 0, 0, 0, timeout=WAIT_S) is None
        assert client.get_board_at_position(MACHINE_NAME, 99, 0, 0, timeout=WAIT_S) is None

        where = _where_is(client, machine=MACHINE_NAME, x=1, y=1, z=1)
        assert where["logical"] == [1, 1, 1]
        assert where["physical"] == [1, 0, 18]

        for name, arg in (
            ("notify_job", job_id),
            ("no_notify_job", job_id),
            ("notify_job", None),
            ("no_notify_job", None),
            ("notify_machine", MACHINE_NAME),
            ("no_notify_machine", MACHINE_NAME),
            ("notify_machine", None),
            ("no_notify_machine", None),
        ):
            assert getattr(client, name)(arg, timeout=WAIT_S) is None, name

        assert client.destroy_job(job_id, "scenario finished", timeout=WAIT_S) is None
        state = client.get_job_state(job_id, timeout=WAIT_S)
        assert state["state"] == 4
        assert state["reason"] == "scenario finished"
        assert all(j["job_id"] != job_id for j in client.list_jobs(timeout=WAIT_S))

        unknown = client.get_job_state(10**9, timeout=WAIT_S)
        assert unknown["state"] == 0
        assert unknown["reason"] is None
    finally:
        client.close()


def scenario_job_forms(host: str, port: int, owner: str) -> None:
    """`Job(...)` in every request form, its properties, and destroy(reason)."""
    new = _client_is_new()
    specific = (17, 13, 1) if new else (13, 17, 2)
    forms: list[tuple[tuple[int, ...], dict[str, Any], int, set[tuple[int, int]]]] = [
        ((), {}, 1, {(8, 8)}),
        ((1,), {}, 1, {(8, 8)}),
        ((4,), {"min_ratio": 0.0}, 6, {(28, 16), (16, 28)}),
        ((1, 1), {}, 3, {(16, 16)}),
        ((2, 1), {}, 6, {(28, 16)}),
        (specific, {"machine": MACHINE_NAME}, 1, {(8, 8)}),
        ((), {"machine": MACHINE_NAME}, 1, {(8, 8)}),
        ((), {"tags": ["default"]}, 1, {(8, 8)}),
    ]
    checker = _protocol_client(host, port)
    try:
        for args, kwargs, n_boards, shapes in forms:
            what = f"Job{args} {kwargs}"
            job = _job(host, port, owner, *args, **kwargs)
            try:
                job.wait_until_ready(timeout=WAIT_S)
                assert int(job.state) == 3, what
                assert job.power is True, what
                assert (job.width, job.height) in shapes, f"{what}: {job.width}x{job.height}"
                assert job.machine_name == MACHINE_NAME, what
                assert len(job.boards) == n_boards, f"{what}: boards {job.boards}"
                assert isinstance(job.hostname, str), what
                assert job.hostname, what
                assert (0, 0) in job.connections, what
                assert len(job.connections) == n_boards, what
                if args == specific:
                    assert [list(b) for b in job.boards] == [list(specific)], what
            finally:
                job.destroy(f"done with {what}")
            state = checker.get_job_state(job.id, timeout=WAIT_S)
            assert state["state"] == 4, what
            assert state["reason"] == f"done with {what}", f"{what}: {state}"
    finally:
        checker.close()


def scenario_power_and_reset(host: str, port: int, owner: str) -> None:
    """`set_power(False)`, `set_power(True)` and `reset()` through `Job`."""
    job = _job(host, port, owner, 1, 1)
    try:
        job.wait_until_ready(timeout=WAIT_S)
        job.set_power(False)
        job.wait_until_ready(timeout=WAIT_S)
        assert job.power is False
        job.set_power(True)
        job.wait_until_ready(timeout=WAIT_S)
        assert job.power is True
        job.reset()
        job.wait_until_ready(timeout=WAIT_S)
        assert job.power is True
        assert int(job.state) == 3
    finally:
        job.destroy()  # also closes the job's connection
    checker = _protocol_client(host, port)
    try:
        assert checker.get_job_state(job.id, timeout=WAIT_S)["state"] == 4
    finally:
        checker.close()


def scenario_notifications(host: str, port: int, owner: str) -> None:
    """`notify_job`/`notify_machine` deliver notifications that `wait_for_notification` sees."""
    watcher = _protocol_client(host, port)
    actor = _protocol_client(host, port)
    try:
        job_id = _create(actor, owner=owner, keepalive=60.0)
        _wait_for_state(actor, job_id, {3})
        watcher.notify_job(job_id, timeout=WAIT_S)
        watcher.notify_machine(MACHINE_NAME, timeout=WAIT_S)
        actor.destroy_job(job_id, "watched", timeout=WAIT_S)
        seen_job = seen_machine = False
        deadline = time.monotonic() + WAIT_S
        while not (seen_job and seen_machine):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"notifications seen: job={seen_job} machine={seen_machine}"
            note = watcher.wait_for_notification(timeout=remaining)
            assert note is not None
            assert set(note) <= {"jobs_changed", "machines_changed"}, note
            seen_job = seen_job or job_id in note.get("jobs_changed", [])
            seen_machine = seen_machine or MACHINE_NAME in note.get("machines_changed", [])

        # After no_notify_job only the other watch remains: a change of another job is silent.
        watcher.no_notify_job(timeout=WAIT_S)
        watcher.no_notify_machine(timeout=WAIT_S)
        other = _create(actor, owner=owner, keepalive=60.0)
        actor.destroy_job(other, "unwatched", timeout=WAIT_S)
        watcher.notify_job(timeout=WAIT_S)  # all jobs: the next change is announced
        third = _create(actor, owner=owner, keepalive=60.0)
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no notification for job {third}"
            note = watcher.wait_for_notification(timeout=remaining)
            assert note is not None
            changed = note.get("jobs_changed", [])
            assert other not in changed, f"unwatched job {other} announced: {note}"
            if third in changed:
                break
        actor.destroy_job(third, "done", timeout=WAIT_S)
    finally:
        watcher.close()
        actor.close()


def scenario_keepalive_expiry(host: str, port: int, owner: str) -> None:
    """A job not kept alive is destroyed: "Job timed out." or, queued, "Cancelled: ..."."""
    client = _protocol_client(host, port)
    try:
        job_id = _create(client, owner=owner, keepalive=0.5)
        _wait_for_state(client, job_id, {3})
        _wait_until_gone(client, job_id)
        state = client.get_job_state(job_id, timeout=WAIT_S)
        assert (state["state"], state["reason"]) == (4, "Job timed out."), state

        # A specific board that another job holds keeps the second job queued until it expires.
        board = (11, 7, 0) if _client_is_new() else (7, 11, 0)
        holder = _create(client, *board, owner=owner, keepalive=None, machine=MACHINE_NAME)
        _wait_for_state(client, holder, {3})
        queued = _create(client, *board, owner=owner, keepalive=0.5, machine=MACHINE_NAME)
        assert client.get_job_state(queued, timeout=WAIT_S)["state"] == 1
        _wait_until_gone(client, queued)
        state = client.get_job_state(queued, timeout=WAIT_S)
        assert (state["state"], state["reason"]) == (4, "Cancelled: Job timed out."), state
        assert client.get_job_state(holder, timeout=WAIT_S)["state"] == 3
        client.destroy_job(holder, timeout=WAIT_S)
    finally:
        client.close()


def scenario_never_fits(host: str, port: int, owner: str) -> None:
    """A request that can never fit is destroyed at once with the reference's reason."""
    from spalloc_client import JobDestroyedError

    client = _protocol_client(host, port)
    try:
        for args, kwargs in (
            ((21, 1), {}),
            ((1201,), {}),
            ((), {"machine": "no-such-machine"}),
            ((), {"tags": ["no-such-tag"]}),
            ((20, 0, 0), {"machine": MACHINE_NAME}),
        ):
            job_id = _create(client, *args, owner=owner, **kwargs)
            state = client.get_job_state(job_id, timeout=WAIT_S)
            assert state["state"] == 4, f"{args} {kwargs}: {state}"
            assert state["reason"] == NEVER_FITS, f"{args} {kwargs}: {state}"
    finally:
        client.close()

    job = _job(host, port, owner, 30, 30)
    try:
        with pytest.raises(JobDestroyedError, match="No suitable machines available"):
            job.wait_until_ready(timeout=WAIT_S)
    finally:
        job.close()


def scenario_where_is(host: str, port: int, owner: str) -> None:
    """`where_is` in its four forms, plus `Job.where_is_machine` on 7.4.1."""
    client = _protocol_client(host, port)
    try:
        logical = _where_is(client, machine=MACHINE_NAME, x=1, y=1, z=1)
        assert logical == {
            "machine": MACHINE_NAME,
            "logical": [1, 1, 1],
            "physical": [1, 0, 18],
            "chip": [20, 16],
            "board_chip": [0, 0],
            "job_id": None,
            "job_chip": None,
        }, logical
        physical = _where_is(client, machine=MACHINE_NAME, cabinet=1, frame=0, board=18)
        assert physical == logical, physical
        chip = _where_is(client, machine=MACHINE_NAME, chip_x=21, chip_y=17)
        assert (chip["logical"], chip["board_chip"]) == ([1, 1, 1], [1, 1]), chip
        assert chip["chip"] == [21, 17]
        wrapped = _where_is(client, machine=MACHINE_NAME, chip_x=-1, chip_y=-1)
        assert wrapped is not None
        assert wrapped["chip"] == [239, 239], wrapped
        assert _where_is(client, machine="no-such-machine", x=0, y=0, z=0) is None

        board = (9, 3, 2) if _client_is_new() else (3, 9, 2)
        job_id = _create(client, *board, owner=owner, keepalive=60.0, machine=MACHINE_NAME)
        _wait_for_state(client, job_id, {3})
        in_job = _where_is(client, job_id=job_id, chip_x=0, chip_y=0)
        assert in_job["logical"] == list(board), in_job
        assert (in_job["job_id"], in_job["job_chip"]) == (job_id, [0, 0]), in_job
        busy = _where_is(client, machine=MACHINE_NAME, x=board[0], y=board[1], z=board[2])
        assert busy["job_id"] == job_id, busy
        assert _where_is(client, job_id=10**9, chip_x=0, chip_y=0) is None
        client.destroy_job(job_id, timeout=WAIT_S)
    finally:
        client.close()

    if _client_is_new():
        job = _job(host, port, owner, 1, 1)
        try:
            job.wait_until_ready(timeout=WAIT_S)
            cabinet_frame_board = job.where_is_machine(0, 0)
            assert len(cabinet_frame_board) == 3
            assert all(isinstance(v, int) for v in cabinet_frame_board)
        finally:
            job.destroy()


def scenario_rejected_requests(host: str, port: int, owner: str) -> None:
    """Clean exceptions for contradictory requests, and no zombie job left behind."""
    from spalloc_client.protocol_client import SpallocServerException

    client = _protocol_client(host, port)
    try:
        before = {j["job_id"] for j in client.list_jobs(timeout=WAIT_S)}
        with pytest.raises(SpallocServerException, match="machine"):
            _call(client, "create_job", owner=owner, machine=MACHINE_NAME, tags=["default"])
        with pytest.raises(SpallocServerException, match="owner"):
            _call(client, "create_job", 1)
        with pytest.raises(SpallocServerException, match=r"where_is|arguments"):
            _call(client, "where_is", machine=MACHINE_NAME, x=0)
        after = {j["job_id"] for j in client.list_jobs(timeout=WAIT_S)}
        assert not (after - before), f"rejected requests left jobs {sorted(after - before)}"
        # The server still serves this connection.
        assert isinstance(client.version(timeout=WAIT_S), str)
    finally:
        client.close()


SCENARIOS: dict[str, Callable[[str, int, str], None]] = {
    name.removeprefix("scenario_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("scenario_") and callable(fn)
}


def _run_in_subprocess() -> None:
    """Entry point of the 7.0.0 subprocess: `SCENARIO HOST PORT OWNER`."""
    name, host, port, owner = sys.argv[1:5]
    SCENARIOS[name](host, int(port), owner)
    print(f"scenario {name} passed")


# ---------------------------------------------------------------------------------------------
# Tests


def run_scenario(name: str, version: str, server: ServerProcess) -> None:
    """Run one scenario under one client version; fail with the client's traceback."""
    owner = f"{name}-{version}@example.org"
    if version == "7.4.1":
        SCENARIOS[name](server.host, server.port, owner)
        return
    code = "from tests.e2e import test_spalloc_library as m; m._run_in_subprocess()"
    result = run_python(code, [name, server.host, str(server.port), owner], version)
    assert result.returncode == 0, (
        f"scenario {name} failed under spalloc {version}:\n{result.stdout}\n{result.stderr}"
    )
    assert f"scenario {name} passed" in result.stdout


def test_installed_client_is_741() -> None:
    from spalloc_client._version import __version__

    assert __version__ == "1!7.4.1"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name: str, client_version: str, shared_server: ServerProcess) -> None:
    run_scenario(name, client_version, shared_server)
