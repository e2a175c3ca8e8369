"""Standby allocations: powered ahead of demand on the real allocation server, handed to jobs.

One `allotment serve` (kernels warmed once, so the PyNN jobs do not each compile them) and
the real `nmpi` client: the seed's example runs on the standby it was handed (the server's
own log says which spalloc job took its image and who destroyed it) and a replacement is
powered; a script that never maps a network gives its standby back uncharged; a network too
large for the standby falls back to boards of its own; a standby destroyed by an operator is
replaced and jobs still finish; stopping the service destroys the standby.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobqueue.standby import StandbyPool
from jobqueue.usage import core_hours
from protocol.client import AllotmentClient
from protocol.messages import JobListEntry
from tests.jobqueue.conftest import Service, run_job

SEED = Path(__file__).resolve().parents[2] / "bench" / "seed_simple_example.py"
TOO_LARGE = """\
import pyNN.spiNNaker as sim
sim.setup(timestep=1.0, n_boards_required=2)
cells = sim.Population(3, sim.IF_curr_exp(i_offset=2.0))
cells.record("spikes")
sim.run(20.0)
print("spikes", sum(len(s) for s in cells.get_data().segments[0].spiketrains))
sim.end()
"""
SMALL = TOO_LARGE.replace(", n_boards_required=2", "")


def _jobs(service: Service) -> list[JobListEntry]:
    async def ask() -> list[JobListEntry]:
        client = await AllotmentClient.connect("127.0.0.1", service.spalloc_port, timeout_s=10)
        try:
            return await client.list_jobs()
        finally:
            await client.aclose()

    return anyio.run(ask)


def _destroy(service: Service, job_id: int) -> None:
    async def destroy() -> None:
        client = await AllotmentClient.connect("127.0.0.1", service.spalloc_port, timeout_s=10)
        try:
            await client.destroy_job(job_id, "operator says no")
        finally:
            await client.aclose()

    anyio.run(destroy)


def _ready_standby(service: Service, other_than: int | None = None) -> JobListEntry:
    """Wait until the pool has a ready standby (not `other_than`) and return it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in _jobs(service):
            is_standby = entry.owner.startswith("nmpi-standby ")
            if is_standby and entry.state == 3 and entry.job_id != other_than:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no ready standby: {_jobs(service)}")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _logged(service: Service, text: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(text in line for line in service.output):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_jobs_run_on_standby_allocations_handed_over_and_replaced(
    full_service: Any, nmpi_client: Any
) -> None:
    service = full_service(is_warming_up=True)
    client = nmpi_client(service, service.token())

    # the seed's example runs on the standby, which is replaced at once
    standby = _ready_standby(service)
    job = run_job(client, SEED.read_text())
    assert job["status"] == "finished", job["log"]
    assert job["provenance"]["standby_spalloc_job"] == standby.job_id
    assert job["provenance"]["standby_used"] is True
    assert _logged(service, f"image of job {standby.job_id} accepted")
    assert _logged(service, f"job {standby.job_id} destroyed: RemoteMachine closed")
    # charged for the job's use of the board only: not for the time it stood by
    used_s = job["provenance"]["board_seconds"]
    ran_s = (
        _when(job["timestamp_completion"]) - _when(job["timestamp_submission"])
    ).total_seconds()
    assert 0 < used_s <= ran_s + 1.0, (used_s, ran_s)
    assert job["resource_usage"]["value"] == pytest.approx(core_hours(used_s))
    replacement = _ready_standby(service, other_than=standby.job_id)

    # a script that never maps a network gives the standby back, uncharged
    job = run_job(client, "print('no network')")
    assert job["status"] == "finished", job["log"]
    assert job["provenance"]["standby_spalloc_job"] == replacement.job_id
    assert job["provenance"]["standby_used"] is False
    assert job["resource_usage"]["value"] == 0.0
    assert _ready_standby(service).job_id == replacement.job_id

    # a network larger than the standby: boards of its own, the standby destroyed
    job = run_job(client, TOO_LARGE)
    assert job["status"] == "finished", job["log"]
    assert f"job {replacement.job_id} handed over has 1 of the 2 boards" in job["log"]
    assert _logged(service, f"job {replacement.job_id} destroyed: RemoteMachine closed")
    assert job["resource_usage"]["value"] > 0

    # a standby destroyed by an operator is replaced, and jobs still finish on boards
    doomed = _ready_standby(service, other_than=replacement.job_id)
    _destroy(service, doomed.job_id)
    fresh = _ready_standby(service, other_than=doomed.job_id)
    job = run_job(client, SMALL)
    assert job["status"] == "finished", job["log"]
    assert job["provenance"]["standby_spalloc_job"] == fresh.job_id
    assert "spikes" in job["log"]

    # stopping the service destroys its standby
    last = _ready_standby(service, other_than=fresh.job_id)
    service.stop()
    assert _logged(service, f"job {last.job_id} destroyed: the batch runner stopped")


def test_an_allocation_server_that_cannot_be_reached_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once it is closed
    pool = StandbyPool("127.0.0.1", port, owner="nmpi-standby test", n_jobs=1, interval_s=0.05)
    with caplog.at_level("INFO", logger="allotment.batch"):
        pool.start()
        try:
            time.sleep(0.6)  # a dozen tries
        finally:
            pool.stop()
    said = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(said) == 1, said
    assert f"the allocation server 127.0.0.1:{port} cannot be reached" in said[0]
    assert pool.take() is None
