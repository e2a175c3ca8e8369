"""Crash safety: `kill -9` the server under load, restart it, and nothing acknowledged is lost.

A client creates, keeps alive and destroys jobs; at a random point it pipelines a few more
requests and the server is killed before their replies are read (so they may or may not have
been committed). After each restart on the same database every acknowledged job is still
there with the same boards, every acknowledged destruction kept its reason, no board is in
two jobs, and the job id counter continues past every id ever handed out.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RawClient, ServerProcess

OWNER = "crash@example.org"
N_KILLS = 3
REQUEST_FORMS: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((4,), {"min_ratio": 0.0}),
    ((1, 1), {}),
    ((2, 2), {}),
]


@dataclass
class Ledger:
    """What the server has acknowledged so far."""

    live: dict[int, list[list[int]] | None] = field(default_factory=dict)
    destroyed: dict[int, str] = field(default_factory=dict)
    max_job_id: int = 0


def _boards(info: dict[str, Any]) -> list[list[int]] | None:
    boards = info["boards"]
    return None if boards is None else sorted(list(b) for b in boards)


def _work(client: RawClient, ledger: Ledger, rng: random.Random, n_ops: int) -> None:
    """Create, keep alive and destroy jobs, recording every acknowledged change."""
    for _ in range(n_ops):
        roll = rng.random()
        if roll < 0.5 or not ledger.live:
            args, kwargs = rng.choice(REQUEST_FORMS)
            job_id = client.call("create_job", *args, owner=OWNER, keepalive=60.0, **kwargs)
            assert isinstance(job_id, int)
            assert job_id > ledger.max_job_id, f"id {job_id} after {ledger.max_job_id}"
            ledger.max_job_id = job_id
            ledger.live[job_id] = _boards(client.call("get_job_machine_info", job_id))
        elif roll < 0.8:
            job_id = rng.choice(sorted(ledger.live))
            reason = f"reason for {job_id}"
            client.call("destroy_job", job_id, reason)
            del ledger.live[job_id]
            ledger.destroyed[job_id] = reason
        else:
            for job_id in ledger.live:
                client.call("job_keepalive", job_id)


def _send_unacknowledged(client: RawClient, ledger: Ledger, rng: random.Random) -> None:
    """Pipeline requests whose replies will never be read: their outcome is unknown."""
    lines = [{"command": "create_job", "args": [1], "kwargs": {"owner": OWNER}}]
    if ledger.live:
        victim = rng.choice(sorted(ledger.live))
        lines.append({"command": "destroy_job", "args": [victim, "unacknowledged"]})
        # The destruction may or may not have happened; either outcome is consistent.
        ledger.live.pop(victim)
    client.send_line(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def _check(client: RawClient, ledger: Ledger) -> None:
    """Everything acknowledged survived, and the state is consistent."""
    for job_id, boards in ledger.live.items():
        state = client.call("get_job_state", job_id)
        assert state["state"] in (1, 2, 3), f"acknowledged job {job_id} lost: {state}"
        info = client.call("get_job_machine_info", job_id)
        if boards is not None:
            assert _boards(info) == boards, f"job {job_id} changed boards"
    for job_id, reason in ledger.destroyed.items():
        state = client.call("get_job_state", job_id)
        assert (state["state"], state["reason"]) == (4, reason), f"job {job_id}: {state}"

    owners: dict[tuple[str, int, int, int], int] = {}
    listed = client.call("list_jobs")
    for job in listed:
        for board in job["boards"] or []:
            key = (job["allocated_machine_name"], *board)
            assert key not in owners, f"board {key} in jobs {owners[key]} and {job['job_id']}"
            owners[key] = job["job_id"]
    highest_listed = max((job["job_id"] for job in listed), default=0)

    probe = client.call("create_job", owner=OWNER, keepalive=60.0)
    assert probe > max(ledger.max_job_id, highest_listed), (
        f"id counter went back: {probe} after {ledger.max_job_id}"
    )
    client.call("destroy_job", probe, "probe")
    ledger.max_job_id = probe
    ledger.destroyed[probe] = "probe"


def _crash_loop(start: Callable[[], ServerProcess], seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger()
    server = start()
    for _ in range(N_KILLS):
        client = RawClient(server.host, server.port)
        _work(client, ledger, rng, rng.randint(5, 40))
        _send_unacknowledged(client, ledger, rng)
        server.kill()
        client.close()

        server = start()
        client = RawClient(server.host, server.port)
        try:
            _check(client, ledger)
        finally:
            client.close()
    assert server.stop() == 0, server.stderr_text


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_loses_nothing_on_sqlite(
    start_server: Callable[..., ServerProcess], tmp_path: Path, seed: int
) -> None:
    directory = tmp_path / "crash"
    _crash_loop(lambda: start_server(directory=directory), seed)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_loses_nothing_on_postgres(
    start_server: Callable[..., ServerProcess], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    try:
        pg_url = request.getfixturevalue("pg_url")
    except pytest.FixtureLookupError:
        pytest.skip("no pg_url fixture in tests/conftest.py")
    if not pg_url:
        pytest.skip("no PostgreSQL server configured (ALLOTMENT_TEST_PG_URL)")
    directory = tmp_path / "crash-pg"
    _crash_loop(lambda: start_server(db_url=str(pg_url), directory=directory), seed=3)
