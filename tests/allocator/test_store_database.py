"""Where the store's SQL runs: the `on_result` hook of `Database.run`.

The store accounts for a commit in that hook, on the event loop, before the flusher that
started the commit resumes, so that every other flusher waiting for it wakes a turn sooner.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from allocator.store.database import Database, GreenletDatabase, ThreadDatabase


def _answer(conn: Connection, value: int) -> int:
    return int(conn.execute(text("SELECT CAST(:v AS INTEGER)"), {"v": value}).scalar_one())


def _fail(conn: Connection) -> None:
    raise ValueError("broken statement")


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db: Database
    if db_url.startswith("postgresql"):
        db = GreenletDatabase(create_async_engine(db_url, poolclass=NullPool))
    else:
        db = ThreadDatabase(create_engine(db_url.replace("+aiosqlite", "")))
    await db.connect()
    try:
        yield db
    finally:
        await db.dispose()


async def test_the_hook_sees_the_result_once_and_before_the_caller_goes_on(
    database: Database,
) -> None:
    seen: list[Any] = []
    value = await database.run(_answer, 7, on_result=lambda v: seen.append(("hook", v)))
    seen.append(("caller", value))
    assert seen == [("hook", 7), ("caller", 7)]


async def test_a_task_woken_by_the_hook_runs_no_later_than_the_caller(sqlite_url: str) -> None:
    # The point of the hook: what it wakes is scheduled before the caller's own wake-up.
    # (SQLite's thread only: asyncpg answers inside the caller's own task.)
    database = ThreadDatabase(create_engine(sqlite_url.replace("+aiosqlite", "")))
    await database.connect()
    try:
        order: list[str] = []
        woken = asyncio.Event()

        async def waiter() -> None:
            await woken.wait()
            order.append("waiter")

        task = asyncio.get_running_loop().create_task(waiter())
        await asyncio.sleep(0)  # the waiter is waiting
        await database.run(_answer, 1, on_result=lambda _: woken.set())
        order.append("caller")
        await task
        assert order == ["waiter", "caller"]
    finally:
        await database.dispose()


async def test_an_error_reaches_the_caller_and_not_the_hook(database: Database) -> None:
    calls: list[Any] = []
    with pytest.raises(ValueError, match="broken statement"):
        await database.run(_fail, on_result=calls.append)
    assert calls == []
    assert await database.run(_answer, 3) == 3  # still usable


async def test_a_caller_cancelled_before_the_answer_gets_no_hook_call(sqlite_url: str) -> None:
    database = ThreadDatabase(create_engine(sqlite_url.replace("+aiosqlite", "")))
    await database.connect()
    try:
        release = threading.Event()
        started = threading.Event()

        def slow(conn: Connection) -> int:
            started.set()
            release.wait(10)
            return _answer(conn, 5)

        calls: list[Any] = []
        task = asyncio.get_running_loop().create_task(database.run(slow, on_result=calls.append))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # The statement still finishes in the thread; its answer is dropped, not hooked.
        assert await database.run(_answer, 6) == 6
        assert calls == []
    finally:
        await database.dispose()
