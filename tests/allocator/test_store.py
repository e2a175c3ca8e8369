"""Contract tests of the durable store, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Connection, create_engine, insert

from allocator import jobs
from allocator.errors import StoreError
from allocator.jobs import JobRecord, JobState
from allocator.store import (
    AppendAudit,
    AuditEntry,
    BoardClaim,
    BoardStatus,
    ClaimBoards,
    DatabaseUnavailableError,
    ForgetJobs,
    LeaseHeldError,
    LinkStatus,
    MachineStatus,
    PutBoardStatus,
    PutJob,
    PutLinkStatus,
    PutMachineStatus,
    ReleaseBoards,
    SchemaVersionError,
    SetNextJobId,
    Store,
    StoredState,
    repository,
    tables,
)
from machine_models.geometry import BoardXYZ, Link
from tests.allocator.faulty_database import SECRET_PARAMETER, Faults

T = TypeVar("T")
T0 = 1_700_000_000.0
B000, B001, B100 = BoardXYZ(0, 0, 0), BoardXYZ(0, 0, 1), BoardXYZ(1, 0, 0)


def queued(job_id: int, keepalive_s: float | None = 60.0) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        owner=f"owner {job_id}",
        created_at=T0 + job_id,
        keepalive_s=keepalive_s,
        args=(2, 1),
        kwargs={"tags": ["default", "big"], "min_ratio": 0.5, "require_torus": False},
    )


def allocated(job_id: int, *boards: BoardXYZ) -> JobRecord:
    return jobs.allocate(queued(job_id), "spinn", boards, 16, 16)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(db_url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_empty_database_loads_empty_state(store: Store) -> None:
    assert await store.load() == StoredState()


async def test_round_trip_of_every_change_type(store: Store, db_url: str) -> None:
    live = dataclasses.replace(allocated(1, B100, B000), keepalivehost="10.0.0.3")
    ready = jobs.power_done(allocated(2, B001))
    gone = jobs.destroy(queued(3, keepalive_s=None), T0 + 9, "done")
    board = BoardStatus("spinn", B100, False, "burnt", T0 + 1, "ops")
    link = LinkStatus("spinn", B000, Link.SOUTH_WEST, False, "flaky", T0 + 2, "ops")
    entry = AuditEntry(T0 + 3, "ops", "set_board_service", "spinn 1 0 0", "burnt", {"n": [1]})
    for change in [
        PutJob(live),
        PutJob(ready),
        PutJob(gone),
        PutJob(queued(4)),
        ForgetJobs((4,)),
        ClaimBoards("spinn", live.boards, 1),
        ClaimBoards("spinn", ready.boards, 2),
        SetNextJobId(10),
        PutBoardStatus(board),
        PutLinkStatus(link),
        AppendAudit(entry),
        AppendAudit(dataclasses.replace(entry, action="drain", reason=None, detail={})),
    ]:
        store.stage(change)
    await store.flush()
    assert store.n_pending == 0
    state = await store.load()
    assert state.jobs == (live, ready, gone)
    assert state.live_jobs == (live, ready)
    assert state.retired_jobs == (gone,)
    assert state.jobs[0].boards == (B000, B100)
    assert all(isinstance(b, BoardXYZ) for b in state.jobs[0].boards)
    assert state.jobs[2].state is JobState.DESTROYED
    assert state.jobs[2].reason == "Cancelled: done"
    assert state.claims == (
        BoardClaim("spinn", 1, (B000, B100)),
        BoardClaim("spinn", 2, (B001,)),
    )
    assert state.next_job_id == 10
    assert state.board_status == (board,)
    assert state.link_status == (link,)
    assert [(a.action, a.reason, dict(a.detail)) for a in state.audit] == [
        ("set_board_service", "burnt", {"n": [1]}),
        ("drain", None, {}),
    ]
    ids = [a.audit_id for a in state.audit]
    assert ids[0] is not None
    assert ids == sorted(ids)


async def test_job_commits_on_the_sqlite_driver_write_the_rows_sqlalchemy_writes(
    tmp_path: Path,
) -> None:
    # Commits of job changes alone go through the driver's connection on SQLite; a commit
    # with anything else goes through SQLAlchemy. Both must leave the same rows.
    live = dataclasses.replace(allocated(1, B100, B000), keepalivehost="10.0.0.3")
    ready = jobs.power_done(allocated(2, B001))
    gone = jobs.destroy(queued(3, keepalive_s=None), T0 + 9, "done")
    changes = [
        PutJob(live),
        PutJob(ready),
        PutJob(gone),
        PutJob(queued(4)),
        ClaimBoards("spinn", live.boards, 1),
        ClaimBoards("spinn", ready.boards, 2),
        SetNextJobId(10),
    ]
    audit = AppendAudit(AuditEntry(T0, "ops", "drain", "spinn"))
    rows = []
    for name, extra in (("driver", []), ("sqlalchemy", [audit])):
        url = f"sqlite:///{tmp_path / name}.db"
        store = await Store.open(url)
        try:
            for change in [*changes, *extra]:
                store.stage(change)
            await store.flush()
            store.stage(ForgetJobs((4,)))
            store.stage(PutJob(jobs.destroy(ready, T0 + 10, "over")))
            store.stage(ReleaseBoards("spinn", ready.boards))
            if extra:
                store.stage(extra[0])
            await store.flush()
        finally:
            await store.close()
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            rows.append(
                (
                    conn.execute("SELECT * FROM jobs ORDER BY job_id").fetchall(),
                    conn.execute("SELECT * FROM board_claims ORDER BY x, y, z").fetchall(),
                    conn.execute("SELECT * FROM allotment_meta ORDER BY key").fetchall(),
                )
            )
    # And each row is the one SQLAlchemy's own JSON and column types write.
    engine = create_engine(f"sqlite:///{tmp_path / 'core'}.db")
    tables.metadata.create_all(engine)
    final = [live, jobs.destroy(ready, T0 + 10, "over"), gone]
    with engine.begin() as conn:
        conn.execute(insert(tables.jobs), [repository._job_row(r) for r in final])
    engine.dispose()
    with sqlite3.connect(tmp_path / "core.db") as conn:
        core_jobs = conn.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()
    driver, through_sqlalchemy = rows
    assert driver[0] == core_jobs
    assert [row[0] for row in driver[0]] == [1, 2, 3]
    assert len(driver[1]) == 2
    assert driver[0] == through_sqlalchemy[0]
    assert driver[1] == through_sqlalchemy[1]
    meta_keys = {"next_job_id", "commit_seq", "schema_version"}
    assert [r for r in driver[2] if r[0] in meta_keys] == [
        r for r in through_sqlalchemy[2] if r[0] in meta_keys
    ]


async def test_later_changes_win_and_release_frees_for_a_new_claim(store: Store) -> None:
    first = allocated(1, B000)
    store.stage(PutJob(queued(1)))
    store.stage(PutJob(first))
    store.stage(ClaimBoards("spinn", (B000,), 1))
    store.stage(PutBoardStatus(BoardStatus("spinn", B000, False, "a", T0, "ops")))
    store.stage(PutBoardStatus(BoardStatus("spinn", B000, True, None, T0 + 1, "ops")))
    await store.flush()
    # Free and re-claim the same board within one commit, and across commits.
    store.stage(ReleaseBoards("spinn", (B000,)))
    store.stage(ClaimBoards("spinn", (B000,), 2))
    await store.flush()
    store.stage(ReleaseBoards("spinn", (B000, B100)))  # B100 was never claimed: no error
    store.stage(ClaimBoards("spinn", (B000, B001), 3))
    await store.flush()
    state = await store.load()
    assert state.jobs == (first,)
    assert state.claims == (BoardClaim("spinn", 3, (B000, B001)),)
    assert state.board_status == (BoardStatus("spinn", B000, True, None, T0 + 1, "ops"),)
    assert state.next_job_id == 2


async def test_double_claim_breaks_the_store_and_commits_nothing_of_it(db_url: str) -> None:
    # The database refused what the one owner of the state believed: serving on would
    # answer from a state that is not durable, so the store gives up (the server restarts).
    store = await Store.open(db_url)
    try:
        store.stage(ClaimBoards("spinn", (B000, B001), 1))
        await store.flush()
        store.stage(PutJob(queued(2)))
        store.stage(ClaimBoards("spinn", (B001,), 2))
        with pytest.raises(
            DatabaseUnavailableError, match=r"^database unavailable, try again$"
        ) as info:
            await store.flush()
        assert "refused a commit of 2 changes" in info.value.detail
        assert store.stats.n_conflicts == 1
        assert store.is_broken
        with pytest.raises(DatabaseUnavailableError):
            store.stage(PutJob(queued(5)))
    finally:
        await store.close()
    reopened = await Store.open(db_url)
    try:
        state = await reopened.load()
        assert state.jobs == ()
        assert state.claims == (BoardClaim("spinn", 1, (B000, B001)),)
    finally:
        await reopened.close()


async def test_double_claim_within_one_commit_fails(store: Store) -> None:
    store.stage(ClaimBoards("spinn", (B000,), 1))
    store.stage(ClaimBoards("spinn", (B000,), 2))
    with pytest.raises(DatabaseUnavailableError) as info:
        await store.flush()
    assert "board (0, 0, 0) of spinn claimed by jobs 1 and 2" in info.value.detail


async def test_concurrent_flushes_share_few_transactions(store: Store) -> None:
    n_requests = 200

    async def request(job_id: int) -> None:
        store.stage(PutJob(queued(job_id)))
        store.stage(SetNextJobId(job_id + 1))
        await store.flush()

    async with asyncio.TaskGroup() as tg:
        for job_id in range(1, n_requests + 1):
            tg.create_task(request(job_id))
    assert store.stats.n_changes == 2 * n_requests
    # Every task stages before any commit starts: the first flusher commits them all.
    assert store.stats.n_commits <= 3
    state = await store.load()
    assert len(state.jobs) == n_requests
    assert state.next_job_id == n_requests + 1


async def test_flush_with_nothing_staged_returns_and_counts_nothing(store: Store) -> None:
    await store.flush()
    assert store.stats.n_commits == 0


async def test_commit_callback_reports_latency_and_size(db_url: str) -> None:
    seen: list[tuple[float, int]] = []
    opened = await Store.open(db_url, on_commit=lambda s, n: seen.append((s, n)))
    try:
        opened.stage(PutJob(queued(1)))
        opened.stage(PutJob(queued(2)))
        await opened.flush()
    finally:
        await opened.close()
    assert len(seen) == 1
    assert seen[0][1] == 2
    assert seen[0][0] >= 0


async def test_reopen_after_close_gives_same_state(db_url: str) -> None:
    first = await Store.open(db_url)
    first.stage(PutJob(allocated(7, B100)))
    first.stage(ClaimBoards("spinn", (B100,), 7))
    first.stage(SetNextJobId(8))
    first.stage(AppendAudit(AuditEntry(T0, "ops", "drain", "spinn")))
    await first.flush()
    before = await first.load()
    first.stage(PutJob(queued(8)))  # staged but never flushed: close commits it
    await first.close()
    with pytest.raises(StoreError, match="is closed"):
        first.stage(PutJob(queued(9)))
    second = await Store.open(db_url)
    try:
        after = await second.load()
    finally:
        await second.close()
    assert after.jobs == (*before.jobs, queued(8))
    assert after.claims == before.claims
    assert after.audit == before.audit
    assert after.next_job_id == 9


async def test_second_server_on_same_database_is_refused(db_url: str) -> None:
    first = await Store.open(db_url)
    try:
        with pytest.raises(LeaseHeldError, match="is in use by another allotment server") as info:
            await Store.open(db_url)
        database = db_url.rsplit("/", 1)[-1]
        assert database in str(info.value)
        # The first keeps writing.
        first.stage(PutJob(queued(1)))
        await first.flush()
    finally:
        await first.close()
    # Once the first is gone, a new server may start.
    third = await Store.open(db_url)
    try:
        assert [r.job_id for r in (await third.load()).jobs] == [1]
    finally:
        await third.close()


async def test_newer_schema_is_refused(db_url: str) -> None:
    from sqlalchemy import update

    from allocator.store import tables

    opened = await Store.open(db_url)
    await opened.close()
    await _behind_the_stores_back(
        db_url,
        lambda conn: conn.execute(
            update(tables.meta).where(tables.meta.c.key == "schema_version").values(value="99")
        ),
    )
    with pytest.raises(SchemaVersionError, match="has schema version 99, newer than version 2"):
        await Store.open(db_url)


async def test_machine_status_last_write_wins_and_survives_reopening(db_url: str) -> None:
    opened = await Store.open(db_url)
    try:
        opened.stage(PutMachineStatus(MachineStatus("spinn", True, "update", T0, "ops")))
        opened.stage(PutMachineStatus(MachineStatus("spare", True, "bench", T0, "ops")))
        opened.stage(PutMachineStatus(MachineStatus("spare", False, "done", T0 + 1, "ops")))
        await opened.flush()
    finally:
        await opened.close()
    again = await Store.open(db_url)
    try:
        assert (await again.load()).machine_status == (
            MachineStatus("spare", False, "done", T0 + 1, "ops"),
            MachineStatus("spinn", True, "update", T0, "ops"),
        )
    finally:
        await again.close()


async def test_version_1_database_is_upgraded_keeping_its_drains(db_url: str) -> None:
    from sqlalchemy import update

    from allocator.store import tables

    def drain(action: str, machine: str, at: float) -> AppendAudit:
        return AppendAudit(AuditEntry(at, "ops", action, machine, "why", {"machine": machine}))

    opened = await Store.open(db_url)
    opened.stage(drain("admin_drain_machine", "spinn", T0))
    opened.stage(drain("admin_drain_machine", "spare", T0 + 1))
    opened.stage(drain("admin_undrain_machine", "spare", T0 + 2))
    await opened.flush()
    await opened.close()

    # Make it the version 1 database it would have been: no machine_status table.
    def downgrade(conn: Connection) -> None:
        tables.machine_status.drop(conn)
        conn.execute(
            update(tables.meta).where(tables.meta.c.key == "schema_version").values(value="1")
        )

    await _behind_the_stores_back(db_url, downgrade)
    upgraded = await Store.open(db_url)
    try:
        state = await upgraded.load()
        assert {(s.machine, s.is_draining) for s in state.machine_status} == {
            ("spinn", True),
            ("spare", False),
        }
    finally:
        await upgraded.close()
    version = await _behind_the_stores_back(
        db_url,
        lambda conn: conn.execute(
            tables.meta.select().where(tables.meta.c.key == "schema_version")
        ).one(),
    )
    assert version.value == "2"


async def _behind_the_stores_back(db_url: str, change: Callable[[Connection], T]) -> T:
    """Run `change` in a transaction of a connection of its own (no store open)."""
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    if db_url.startswith("sqlite"):
        engine = create_engine(db_url)
        try:
            with engine.begin() as conn:
                return change(conn)
        finally:
            engine.dispose()
    async_engine = create_async_engine(db_url)
    try:
        async with async_engine.begin() as async_conn:
            return await async_conn.run_sync(change)
    finally:
        await async_engine.dispose()


async def test_bad_urls_are_refused() -> None:
    with pytest.raises(StoreError, match="is not valid"):
        await Store.open("not a url")
    with pytest.raises(StoreError, match="is not sqlite or postgresql"):
        await Store.open("mysql+aiomysql://u@h/db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite+aiosqlite://"])
async def test_in_memory_sqlite_works(url: str) -> None:
    opened = await Store.open(url)
    try:
        opened.stage(PutJob(queued(1)))
        await opened.flush()
        assert [r.job_id for r in (await opened.load()).jobs] == [1]
        assert "pending=0" in repr(opened)
    finally:
        await opened.close()


@pytest.mark.parametrize("n_yields", [0, 1, 2, 3, 5, 8, 13, 21])
async def test_cancelled_flusher_never_loses_or_doubles_a_commit(
    store: Store, n_yields: int
) -> None:
    # Cancel the committing flusher at different points of its transaction; the claim
    # would conflict with itself if the interrupted commit were applied twice.
    store.stage(PutJob(allocated(1, B000)))
    store.stage(ClaimBoards("spinn", (B000,), 1))
    task = asyncio.get_running_loop().create_task(store.flush())
    for _ in range(n_yields):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    store.stage(ClaimBoards("spinn", (B001,), 1))
    await store.flush()
    state = await store.load()
    assert state.claims == (BoardClaim("spinn", 1, (B000, B001)),)
    assert state.jobs == (allocated(1, B000),)
    assert store.stats.n_conflicts == 0


async def test_a_flusher_cancelled_between_its_commit_and_its_wake_up_counts_it_once(
    db_url: str,
) -> None:
    # The commit is accounted for on the loop before the flusher resumes; a cancel landing
    # in between (shutdown) must neither lose nor repeat it.
    flusher: list[asyncio.Task[None]] = []
    opened = await Store.open(db_url, on_commit=lambda _s, _n: flusher[0].cancel())
    try:
        opened.stage(PutJob(allocated(1, B000)))
        opened.stage(ClaimBoards("spinn", (B000,), 1))
        flusher.append(asyncio.get_running_loop().create_task(opened.flush()))
        with pytest.raises(asyncio.CancelledError):
            await flusher[0]
        assert opened.n_pending == 0
        assert opened.stats.n_commits == 1
        flusher[0] = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        opened.stage(ClaimBoards("spinn", (B001,), 1))
        await opened.flush()
        state = await opened.load()
        assert state.claims == (BoardClaim("spinn", 1, (B000, B001)),)
        assert opened.stats.n_commits == 2
        assert opened.stats.n_conflicts == 0
    finally:
        await opened.close()


async def test_a_transient_failure_is_retried_and_nothing_is_lost(db_url: str) -> None:
    faults = Faults()
    store = await Store.open(db_url, retry_backoff_s=0.001, wrap_database=faults.wrap)
    try:
        faults.db.fail_next(3)
        store.stage(PutJob(queued(1)))
        await store.flush()  # waits through the failures, then returns: durable
        assert faults.db.n_failed == 3
        assert store.stats.n_retries == 3
        assert not store.is_broken
        assert [r.job_id for r in (await store.load()).jobs] == [1]
    finally:
        await store.close()


async def test_a_database_that_stays_down_breaks_the_store_with_a_short_error(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    faults = Faults()
    store = await Store.open(
        db_url, retry_for_s=0.2, retry_backoff_s=0.01, wrap_database=faults.wrap
    )
    try:
        faults.db.is_down = True
        store.stage(PutJob(queued(1)))
        with pytest.raises(DatabaseUnavailableError) as info:
            await store.flush()
        assert str(info.value) == "database unavailable, try again"
        assert SECRET_PARAMETER not in str(info.value)
        assert "disk I/O error" in info.value.detail
        assert faults.db.n_failed >= 2  # it was tried again before giving up
        assert any("giving up" in r.getMessage() for r in caplog.records)
        # The store refuses from now on, even once the database is back.
        faults.db.is_down = False
        with pytest.raises(DatabaseUnavailableError):
            store.stage(PutJob(queued(2)))
        assert (await asyncio.wait_for(store.wait_broken(), 1)) is not None
    finally:
        await store.close()
    reopened = await Store.open(db_url)
    try:
        assert (await reopened.load()).jobs == ()
    finally:
        await reopened.close()
