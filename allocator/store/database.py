"""Where the store's SQL runs: synchronous SQLAlchemy code, kept off the event loop.

The repository writes every database operation once, as a plain function of a synchronous
SQLAlchemy `Connection`, and hands it to a `Database` to run:

    SQLite      one thread owns the connection; each `run` is a single hop to that thread,
                however many statements the function executes (a group commit is one hop)
    PostgreSQL  the asyncpg connection, driven through SQLAlchemy's greenlet bridge
                (`AsyncConnection.run_sync`): no thread, asyncpg is asynchronous itself

A SQLite statement through an asynchronous driver costs several hops between the event loop
and the driver's thread, each waiting for a turn of a busy loop; a commit of a few statements
took ~7 ms of wall time that way under load, against ~1 ms for the same work as one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["Database", "GreenletDatabase", "ThreadDatabase"]

T = TypeVar("T")


class Database(Protocol):
    """Runs synchronous database functions for the event loop; one connection at a time."""

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the connection (raises what the driver raises)."""

    async def run(
        self, fn: Callable[..., T], *args: Any, on_result: Callable[[T], None] | None = None
    ) -> T:
        """Call ``fn(connection, *args)`` where the connection lives and return its result.

        ``on_result``, if given, is called with the result on the event loop as soon as it
        is there, before the caller resumes (a turn of the loop sooner), unless the caller
        was cancelled meanwhile. It is not called when ``fn`` raises.
        """

    async def drop(self, *, invalidate: bool = False) -> None:
        """Close the connection (``invalidate``: it is broken, do not reuse it)."""

    async def dispose(self) -> None:
        """Close the connection and release everything the database holds."""


class ThreadDatabase:
    """A synchronous engine whose one connection is used by one thread only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allotment-db")
        self._conn: Connection | None = None

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    async def _hop(
        self, fn: Callable[..., T], *args: Any, on_result: Callable[[T], None] | None = None
    ) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(value: T | None, error: BaseException | None) -> None:
            # On the loop. A cancelled caller leaves the outcome to whoever asks next.
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(error)
                return
            if on_result is not None:
                on_result(cast(T, value))
            future.set_result(cast(T, value))

        def work() -> None:
            # In the thread: the answer goes straight to the loop as one callback, rather
            # than through a concurrent future chained to an asyncio one.
            try:
                value: T | None = fn(*args)
                error: BaseException | None = None
            except BaseException as raised:  # handed to the caller, whatever it is
                value, error = None, raised
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(settle, value, error)

        self._thread.submit(work)
        return await future

    async def connect(self) -> None:
        self._conn = await self._hop(self._engine.connect)

    async def run(
        self, fn: Callable[..., T], *args: Any, on_result: Callable[[T], None] | None = None
    ) -> T:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        return await self._hop(fn, self._conn, *args, on_result=on_result)

    async def drop(self, *, invalidate: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._hop(_close, conn, invalidate)

    async def dispose(self) -> None:
        try:
            await self.drop()
            await self._hop(self._engine.dispose)
        finally:
            self._thread.shutdown(wait=False)


class GreenletDatabase:
    """An asynchronous engine; synchronous code runs on it through `run_sync`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        self._conn = await self._engine.connect()

    async def run(
        self, fn: Callable[..., T], *args: Any, on_result: Callable[[T], None] | None = None
    ) -> T:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        value = await self._conn.run_sync(fn, *args)
        if on_result is not None:
            on_result(value)
        return value

    async def drop(self, *, invalidate: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if invalidate:
                await conn.invalidate()
            await conn.close()

    async def dispose(self) -> None:
        try:
            await self.drop()
        finally:
            await self._engine.dispose()


def _close(conn: Connection, invalidate: bool) -> None:
    if invalidate:
        conn.invalidate()
    conn.close()
