"""The job store under concurrent writers: what a transaction read cannot change before it
writes, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from jobqueue import tables
from jobqueue.store import Identity, JobStore

N_WRITERS = 12


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    opened = JobStore.open(db_url)
    try:
        yield opened
    finally:
        opened.close()


def _job_values(collab: str) -> dict[str, Any]:
    return {"code": "print(1)", "collab": collab, "hardware_platform": "SpiNNaker"}


def _finish(store: JobStore, job_id: int, *, log: str, core_hours: float) -> None:
    """End a job as runner-1 finishing it would."""
    store.finish(
        job_id,
        "runner-1",
        status="finished",
        log=log,
        outputs=(),
        provenance={},
        core_hours=core_hours,
    )


@pytest.mark.timeout(60)
def test_first_jobs_of_a_collab_at_once_make_one_demo_project(store: JobStore) -> None:
    # Each submit finds no quota and creates the demo project: without a lock several
    # writers each found none and the collab got several 5,000 core-hour projects.
    barrier = threading.Barrier(N_WRITERS)
    failures: list[BaseException] = []

    def submit(n: int) -> None:
        barrier.wait()
        try:
            store.submit(Identity(f"user{n}", ("shared",)), _job_values("shared"))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(N_WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with store.engine.connect() as conn:
        n_projects = conn.execute(
            select(func.count())
            .select_from(tables.projects)
            .where(tables.projects.c.collab == "shared")
        ).scalar_one()
        n_jobs = conn.execute(select(func.count()).select_from(tables.jobs)).scalar_one()
    assert (n_projects, n_jobs) == (1, N_WRITERS)


@pytest.mark.timeout(60)
def test_a_job_removed_while_it_finishes_stays_removed(store: JobStore, db_url: str) -> None:
    # finish() reads the job's status, then writes its own; a remove() committed in between
    # was overwritten and the job came back as finished.
    job = store.submit(Identity("alice", ()), _job_values("private-alice"))
    taken = store.claim("runner-1", "SpiNNaker")
    assert taken is not None
    assert taken["id"] == job["id"]
    other = JobStore.open(db_url)
    removed = threading.Event()
    is_finishing = threading.Event()

    def remove() -> None:
        other.remove(job["id"])
        removed.set()

    def remove_now(conn: Any, clause: Any, *args: Any) -> None:
        statement = str(clause)
        if is_finishing.is_set() and statement.startswith("SELECT") and "nmpi_jobs" in statement:
            is_finishing.clear()
            threading.Thread(target=remove).start()
            # The remove waits for the finishing transaction (at most this long, if it does not).
            removed.wait(1.0)

    event.listen(store.engine, "after_execute", remove_now)
    try:
        is_finishing.set()
        _finish(store, job["id"], log="done", core_hours=0.0)
        assert removed.wait(30)
    finally:
        event.remove(store.engine, "after_execute", remove_now)
        other.close()
    assert store.job(job["id"])["status"] == "removed"


def test_a_job_given_up_as_lost_that_its_runner_still_ends_is_charged_once(
    store: JobStore,
) -> None:
    job = store.submit(Identity("alice", ()), _job_values("private-alice"))
    assert store.claim("runner-1", "SpiNNaker") is not None
    assert store.reap_lost(15, runner_ids=["runner-1"]) == [job["id"]]
    for _ in range(2):  # (a second finish charges nothing more)
        _finish(store, job["id"], log="the runner's log", core_hours=7.5)
    ended = store.job(job["id"])
    assert ended["status"] == "error"
    assert ended["log"].startswith("the runner's log")
    assert "the runner running this job stopped (lost)" in ended["log"]
    (project,) = store.projects("private-alice", None)
    assert [quota["usage"] for quota in project["quotas"]] == [7.5]


def test_a_job_whose_quota_ran_out_while_it_waited_ends_unrun(store: JobStore) -> None:
    # The quota was checked at submission only: jobs queued before it ran out all ran,
    # overdrawing it without limit.
    alice = Identity("alice", ("lab",))
    first = store.submit(alice, _job_values("lab"))
    second = store.submit(alice, _job_values("lab"))
    store.set_quota("lab", "SpiNNaker", 0.0)  # used up by the jobs before them
    other = store.submit(Identity("bob", ("elsewhere",)), _job_values("elsewhere"))
    claimed = store.claim("runner-1", "SpiNNaker")
    assert claimed is not None
    assert claimed["id"] == other["id"]  # the refused ones are passed over, not the queue
    for job_id in (first["id"], second["id"]):
        job = store.job(job_id)
        assert job["status"] == "error"
        assert "collab 'lab' has no quota left on SpiNNaker: the job was not run" in job["log"]
        assert job["resource_usage"] == 0.0
    assert store.claim("runner-1", "SpiNNaker") is None
