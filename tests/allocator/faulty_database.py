"""A `Database` that fails on demand, as one that is down or drops connections does.

Wrapped around the real one (SQLite or PostgreSQL) through ``Store.open(wrap_database=...)``:
while failing, every operation raises the `OperationalError` a driver raises, whose text
carries an SQL statement and another user's parameters, so tests can check that neither
reaches a client.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from allocator.store import Database

T = TypeVar("T")

SECRET_PARAMETER = "other.user@example.org"
STATEMENT = "INSERT INTO jobs (job_id, owner) VALUES (?, ?)"


class FaultyDatabase:
    """The real database, failing the next `n` operations (`fail_next`) or all (`is_down`)."""

    def __init__(self, inner: Database) -> None:
        self._inner = inner
        self.n_to_fail = 0
        self.is_down = False
        self.n_failed = 0

    def __repr__(self) -> str:
        return f"<FaultyDatabase down={self.is_down} to_fail={self.n_to_fail}>"

    def fail_next(self, n: int) -> None:
        """Fail the next `n` operations (connections included), then work again."""
        self.n_to_fail = n

    @property
    def is_connected(self) -> bool:
        return self._inner.is_connected

    def _check(self) -> None:
        if self.is_down or self.n_to_fail > 0:
            self.n_to_fail = max(0, self.n_to_fail - 1)
            self.n_failed += 1
            raise OperationalError(
                STATEMENT, (7, SECRET_PARAMETER), sqlite3.OperationalError("disk I/O error")
            )

    async def connect(self) -> None:
        self._check()
        await self._inner.connect()

    async def run(
        self, fn: Callable[..., T], *args: Any, on_result: Callable[[T], None] | None = None
    ) -> T:
        self._check()
        return await self._inner.run(fn, *args, on_result=on_result)

    async def drop(self, *, invalidate: bool = False) -> None:
        await self._inner.drop(invalidate=invalidate)

    async def dispose(self) -> None:
        await self._inner.dispose()


class Faults:
    """Collects the `FaultyDatabase` a store was opened with: ``wrap_database=faults.wrap``."""

    def __init__(self) -> None:
        self.database: FaultyDatabase | None = None

    def wrap(self, inner: Database) -> Database:
        self.database = FaultyDatabase(inner)
        return self.database

    @property
    def db(self) -> FaultyDatabase:
        assert self.database is not None, "no store was opened with this wrapper"
        return self.database
