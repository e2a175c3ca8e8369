"""The durable store: one writer connection, group commit, and the writer lease.

`Store.open(url)` connects (SQLite by default, or PostgreSQL through
asyncpg), takes the writer lease, creates or checks the schema. The service then calls
`stage(change)` (sync, cheap) and `await flush()`, which returns once everything staged
before the call is committed.

Every database operation is a plain function of a synchronous SQLAlchemy connection, run
by `allocator.store.database` off the event loop (SQLite: one hop to the thread owning the
connection per operation, so a group commit costs one hop however many statements it has).

Group commit without a background task: `flush` takes the writer lock; whoever holds it
commits *everything* staged so far in one transaction. Flushers that arrive while a commit
is under way wait for it to end, all woken together, and usually find their changes durable
by then; the first of them that still has changes staged commits them for all. Whoever
takes the lock lets the event loop turn twice before it starts, so that the requests read
in the same batch join its transaction::

    flush A --[lock: commit a1]-----------> return
    flush B    (stages b1, waits) --+--[lock: commit b1 c1]--> return
    flush C    (stages c1, waits) --+--(b1 c1 in flight: waits)--> return

A transaction writes each table with at most a few statements (executemany), whatever the
number of changes. It also bumps a commit sequence number kept in the database, so that a
transaction interrupted in its COMMIT (a cancelled flusher, a lost connection) is resolved
by reading the number back rather than by guessing.

Leases: on SQLite an exclusive `flock` on "<database>.lock" (released by the kernel when the
process dies, so kill -9 never leaves a stale lease); on PostgreSQL a session advisory lock
held by the writer connection, checked again in every transaction through the row-locked
lease row.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, cast

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    inspect,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from allocator.errors import StoreError
from allocator.jobs import JobRecord, JobState
from allocator.store import tables as t
from allocator.store.changes import (
    AppendAudit,
    AuditEntry,
    BoardClaim,
    BoardStatus,
    Change,
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
    StoreConflictError,
    StoredState,
    StoreStats,
)
from allocator.store.database import Database, GreenletDatabase, ThreadDatabase
from machine_models.geometry import BoardXYZ, Link
from protocol.codec import json_text

__all__ = ["Store"]

log = logging.getLogger("allotment.store")

# The PostgreSQL advisory lock key of the writer lease ("allo" in ASCII); advisory locks are
# per database, so one key serves every database on a server.
_PG_LEASE_KEY = 0x616C6C6F

_TRANSIENT = (OperationalError, ConnectionError, OSError, TimeoutError)

Synchronous = Literal["normal", "full"]


_MAX_BACKOFF_S = 2.0
"""The longest pause between two attempts at a commit while the database is failing."""


def _is_transient(error: BaseException) -> bool:
    """Whether a failed commit may succeed if tried again (a lost or refused connection)."""
    if isinstance(error, DBAPIError):
        return isinstance(error, OperationalError) or bool(error.connection_invalidated)
    if isinstance(error, LeaseHeldError | SchemaVersionError | StoreConflictError):
        return False
    # A reconnection that failed (StoreError from `_connect`), or the socket itself.
    return isinstance(error, StoreError | ConnectionError | OSError | TimeoutError)


_GATHER_TURNS = 2
"""Event-loop turns a commit waits for more changes before it starts (see `Store.flush`)."""

_UPGRADABLE = frozenset({1})
"""Older schema versions that opening a database upgrades in place."""

_DRAIN_ACTIONS = ("admin_drain_machine", "admin_undrain_machine")


def _describe(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _normalise(url: URL) -> URL:
    # SQLite runs on the standard library's driver in the store's own thread; the
    # "sqlite+aiosqlite" spelling of earlier versions is accepted and means the same file.
    driver = {
        "sqlite": "sqlite+pysqlite",
        "sqlite+aiosqlite": "sqlite+pysqlite",
        "postgresql": "postgresql+asyncpg",
    }
    return url.set(drivername=driver.get(url.drivername, url.drivername))


class Store:
    """The durable state of the service in one SQL database.

    Use `await Store.open(url)`, never the constructor. Not safe to share between event
    loops; one `Store` per process and database.
    """

    def __init__(
        self,
        database: Database,
        url: URL,
        *,
        lock_file: IO[bytes] | None,
        retry_for_s: float,
        retry_backoff_s: float,
        on_commit: Callable[[float, int], None] | None,
    ) -> None:
        self._db = database
        self._url = url
        self._name = _describe(url)
        self._is_postgres = url.get_backend_name() == "postgresql"
        self._lock_file = lock_file
        self._retry_for_s = retry_for_s
        self._retry_backoff_s = retry_backoff_s
        self._on_commit = on_commit
        self._token = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._lock = asyncio.Lock()
        self._round_waiters: list[asyncio.Future[None]] = []
        self._request_json = RequestJson()  # used in the database thread only
        self._staged: list[Change] = []
        self._inflight: list[Change] = []
        self._n_staged = 0
        self._n_done = 0
        self._commit_seq = 0
        self._doubt: tuple[int, int] | None = None
        self._broken: StoreError | None = None
        self._is_broken = asyncio.Event()
        self._is_closed = False
        self.stats = StoreStats()
        self._statements: dict[str, Any] = {}

    # --- opening and closing ---------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        synchronous: Synchronous = "normal",
        retry_for_s: float = 30.0,
        retry_backoff_s: float = 0.05,
        wrap_database: Callable[[Database], Database] | None = None,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> Store:
        """Connect, take the writer lease and create (or check) the schema.

        Args:
            url: an SQLAlchemy URL: "sqlite:///path.db" ("sqlite+aiosqlite:" works too)
                or "postgresql+asyncpg://user@host/db".
            synchronous: SQLite only: "normal" survives a process crash (kill -9), "full"
                also a power cut, at the price of an fsync per commit.
            retry_for_s: how long a commit that fails on transient errors (a lost
                connection, a database that is down) is tried again before the store gives
                up: from then on it refuses everything with `DatabaseUnavailableError`.
            retry_backoff_s: the first pause between attempts; it doubles each time, up to
                two seconds.
            wrap_database: wraps the database the store runs its SQL on (tests inject
                failures with it).
            on_commit: called with (seconds, n_changes) after each committed transaction.

        Raises:
            LeaseHeldError: another server holds the database.
            SchemaVersionError: the database has a schema version this server does not know.
            StoreError: the database cannot be reached or the URL is unusable.
        """
        try:
            parsed = _normalise(make_url(url))
        except Exception as error:
            raise StoreError(f"database url {url!r} is not valid: {error}") from error
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"database url {_describe(parsed)} is not sqlite or postgresql")
        lock_file = None
        database: Database
        if backend == "sqlite":
            database = ThreadDatabase(cls._sqlite_engine(parsed, synchronous))
            if parsed.database not in (None, "", ":memory:"):
                lock_file = cls._take_file_lease(str(parsed.database), _describe(parsed))
        else:
            database = GreenletDatabase(create_async_engine(parsed, poolclass=NullPool))
        if wrap_database is not None:
            database = wrap_database(database)
        store = cls(
            database,
            parsed,
            lock_file=lock_file,
            retry_for_s=retry_for_s,
            retry_backoff_s=retry_backoff_s,
            on_commit=on_commit,
        )
        try:
            await store._connect()
        except BaseException:
            await store._dispose()
            raise
        return store

    @staticmethod
    def _sqlite_engine(url: URL, synchronous: Synchronous) -> Engine:
        is_memory = url.database in (None, "", ":memory:")
        engine = create_engine(
            url,
            poolclass=StaticPool if is_memory else NullPool,
            # Opened and used by the store's database thread only.
            connect_args={"timeout": 30, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Take BEGIN out of the driver's hands so that `_begin` can say IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # Take the write lock at BEGIN: no deadlock between two readers that upgrade.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    @staticmethod
    def _take_file_lease(database: str, name: str) -> IO[bytes]:
        # Blocking file calls at start-up only, before the store serves any request.
        lock_path = database + ".lock"
        try:
            lock_file = open(lock_path, "a+b")  # noqa: SIM115 - held for the store's lifetime
        except OSError as error:
            raise StoreError(f"cannot open lock file of database {name}: {error}") from error
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            lock_file.seek(0)
            holder = lock_file.read(200).decode(errors="replace").strip() or None
            lock_file.close()
            raise LeaseHeldError(name, holder) from error
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{socket.gethostname()} pid {os.getpid()}".encode())
        lock_file.flush()
        return lock_file

    async def _connect(self) -> None:
        """Open the writer connection, take the lease and set up the schema."""
        try:
            await self._db.connect()
        except DBAPIError as error:
            raise StoreError(f"cannot connect to database {self._name}: {error.orig}") from error
        except OSError as error:
            raise StoreError(f"cannot connect to database {self._name}: {error}") from error
        try:
            await self._db.run(self._start_session)
        except BaseException:
            await self._db.drop()
            raise

    def _start_session(self, conn: Connection) -> None:
        if self._is_postgres:
            is_locked = conn.exec_driver_sql(
                f"SELECT pg_try_advisory_lock({_PG_LEASE_KEY})"
            ).scalar()
            conn.commit()
            if not is_locked:
                raise LeaseHeldError(self._name, self._lease_holder(conn))
        with conn.begin():
            self._prepare_schema(conn)

    @staticmethod
    def _lease_holder(conn: Connection) -> str | None:
        try:
            with conn.begin():
                row = conn.execute(select(t.meta.c.value).where(t.meta.c.key == "lease"))
                value: str | None = row.scalar()
                return value
        except DBAPIError:
            return None

    def _prepare_schema(self, conn: Connection) -> None:
        has_meta = inspect(conn).has_table(t.meta.name)
        values: dict[str, str] = {}
        found = t.SCHEMA_VERSION
        if has_meta:
            rows = conn.execute(select(t.meta.c.key, t.meta.c.value))
            values = {key: value for key, value in rows.all()}
            found = int(values.get("schema_version", t.SCHEMA_VERSION))
            if found not in _UPGRADABLE and found != t.SCHEMA_VERSION:
                raise SchemaVersionError(self._name, found, t.SCHEMA_VERSION)
        t.metadata.create_all(conn)  # creates the tables a version lacks
        if found in _UPGRADABLE:
            self._upgrade_from_1(conn)
            conn.execute(
                self._set_meta(),
                {"meta_key": "schema_version", "meta_value": str(t.SCHEMA_VERSION)},
            )
        defaults = {
            "schema_version": str(t.SCHEMA_VERSION),
            "next_job_id": "1",
            "commit_seq": "0",
            "lease": "",
        }
        missing = [{"key": k, "value": v} for k, v in defaults.items() if k not in values]
        if missing:
            conn.execute(t.meta.insert(), missing)
        conn.execute(update(t.meta).where(t.meta.c.key == "lease").values(value=self._token))
        self._commit_seq = int(values.get("commit_seq", "0"))

    @staticmethod
    def _upgrade_from_1(conn: Connection) -> None:
        """Version 1 kept drains only in the audit log: their net effect seeds the table."""
        rows = conn.execute(
            select(
                t.audit.c.at, t.audit.c.who, t.audit.c.action, t.audit.c.reason, t.audit.c.detail
            )
            .where(t.audit.c.action.in_(_DRAIN_ACTIONS))
            .order_by(t.audit.c.id)
        )
        latest: dict[str, MachineStatus] = {}
        for at, who, action, reason, detail in rows.all():
            machine = dict(detail).get("machine")
            if isinstance(machine, str):
                is_draining = action == "admin_drain_machine"
                latest[machine] = MachineStatus(machine, is_draining, reason, at, who)
        if latest:
            conn.execute(t.machine_status.insert(), [_machine_row(s) for s in latest.values()])

    async def close(self) -> None:
        """Commit what is still staged (best effort), release the lease and disconnect."""
        if self._is_closed:
            return
        try:
            if self._broken is None and (self._staged or self._inflight):
                try:
                    await self.flush()
                except StoreError as error:
                    log.error("changes lost at close of database %s: %s", self._name, error)
        finally:
            self._is_closed = True
            await self._dispose()

    async def _dispose(self) -> None:
        try:
            await self._db.dispose()
        except (DBAPIError, OSError) as error:
            log.warning("closing database %s: %s", self._name, error)
        if self._lock_file is not None:
            # Closing the file drops the flock.
            self._lock_file.close()
            self._lock_file = None

    # --- staging and flushing -----------------------------------------------------------

    def stage(self, change: Change) -> None:
        """Queue a change for the next commit; never blocks.

        Raises:
            StoreError: the store is closed or gave up after repeated failures.
        """
        self._check_usable()
        self._staged.append(change)
        self._n_staged += 1

    async def flush(self) -> None:
        """Return once every change staged before this call is committed.

        Raises:
            DatabaseUnavailableError: the database kept failing for `retry_for_s`, failed
                in a way no retry mends, or refused a transaction (a double claim: a bug
                upstream). The store refuses everything from then on.
            StoreError: the store is closed.
        """
        target = self._n_staged
        while self._n_done < target:
            self._check_usable()
            if self._lock.locked():
                # A commit is under way; it may not hold our changes. Wait for it to end
                # together with every other flusher, then look again.
                waiter = asyncio.get_running_loop().create_future()
                self._round_waiters.append(waiter)
                await waiter
                continue
            async with self._round():
                # Two turns of the event loop first, so that the requests read together
                # with this one (the server starts each a turn after reading it) stage
                # their changes too and share this transaction: fewer, larger commits
                # (13,600 -> 14,000 requests/s in bench/server_load.py; one turn: 13,500).
                for _ in range(_GATHER_TURNS):
                    await asyncio.sleep(0)
                self._check_usable()
                if self._n_done < target:
                    await self._commit_with_retry()

    @contextlib.asynccontextmanager
    async def _round(self) -> AsyncIterator[None]:
        """Hold the writer lock; on release wake every flusher that waited for it at once."""
        async with self._lock:
            try:
                yield
            finally:
                self._wake_round_waiters()

    def _wake_round_waiters(self) -> None:
        waiters, self._round_waiters = self._round_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def mark(self) -> int:
        """A watermark: the number of changes staged so far.

        A caller that staged a change notes the mark; the change is durable once
        `is_durable(mark)` holds, so a read that depends on that change alone need not
        wait for everything else in flight.
        """
        return self._n_staged

    def is_durable(self, mark: int) -> bool:
        """Whether every change staged up to `mark` has been committed."""
        return self._n_done >= mark

    async def flush_to(self, mark: int) -> None:
        """Return once every change staged up to `mark` is committed (maybe more)."""
        if self._n_done < mark:
            await self.flush()

    @property
    def n_pending(self) -> int:
        """How many staged changes are not yet committed."""
        return self._n_staged - self._n_done

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._is_closed:
            raise StoreError(f"store of database {self._name} is closed")

    @property
    def is_broken(self) -> bool:
        """Whether the store gave up (see `wait_broken`)."""
        return self._broken is not None

    async def wait_broken(self) -> StoreError:
        """Return the error once the store has given up on the database (maybe never)."""
        await self._is_broken.wait()
        assert self._broken is not None
        return self._broken

    def _break(self, detail: str) -> DatabaseUnavailableError:
        """Give up on the database: log why, refuse everything from now on."""
        error = DatabaseUnavailableError(self._name, detail)
        if self._broken is None:
            log.error("database %s unavailable, giving up: %s", self._name, detail)
            self._broken = error
            self._is_broken.set()
            self._wake_round_waiters()
        return error

    async def _commit_with_retry(self) -> None:
        """Commit, retrying transient failures with backoff for at most `retry_for_s`.

        Flushers wait meanwhile (nothing is acknowledged before it is durable). A failure
        no retry mends, or one that lasts too long, breaks the store.
        """
        deadline = time.monotonic() + self._retry_for_s
        backoff_s = self._retry_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._commit_round()
            except (*_TRANSIENT, DBAPIError, StoreError) as error:
                text = _error_text(error)
                if not _is_transient(error):
                    raise self._break(text) from error
                self.stats.n_retries += 1
                await self._drop_connection()
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise self._break(
                        f"commits failed for {self._retry_for_s:g} s ({attempt} attempts): {text}"
                    ) from error
                log.warning(
                    "commit to database %s failed (attempt %d, retrying for %.1f s more): %s",
                    self._name,
                    attempt,
                    left_s,
                    text,
                )
                await asyncio.sleep(min(backoff_s, left_s))
                backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)
            else:
                if attempt > 1:
                    log.warning("database %s is back after %d attempts", self._name, attempt)
                return

    async def _drop_connection(self) -> None:
        with contextlib.suppress(DBAPIError, OSError):
            await self._db.drop(invalidate=True)

    async def _ensure_connected(self) -> None:
        if not self._db.is_connected:
            await self._connect()

    async def _commit_round(self) -> None:
        """Commit everything in flight or staged in one transaction (lock held)."""
        await self._ensure_connected()
        if self._doubt is not None:
            await self._resolve_doubt()
        self._inflight.extend(self._staged)
        self._staged.clear()
        n_changes = len(self._inflight)
        if not n_changes:
            return
        seq = self._commit_seq + 1
        self._doubt = (seq, n_changes)
        started = time.perf_counter()

        def committed(_: None) -> None:
            # On the loop as soon as the commit is known, before this coroutine resumes: the
            # flushers waiting for it wake a turn sooner.
            elapsed_s = time.perf_counter() - started
            self._doubt = None
            self._commit_seq = seq
            self._done(n_changes)
            self.stats.n_commits += 1
            self.stats.n_changes += n_changes
            self.stats.commit_s_total += elapsed_s
            self.stats.last_commit_s = elapsed_s
            self._wake_round_waiters()
            if self._on_commit is not None:
                self._on_commit(elapsed_s, n_changes)

        try:
            batch = _net_effect(self._inflight)
            await self._db.run(self._write, batch, seq, on_result=committed)
        except (IntegrityError, StoreConflictError) as error:
            # Constraints are checked before COMMIT: the transaction is rolled back for sure.
            # The state in memory allowed what the database forbids: a bug upstream, and the
            # store gives up rather than serve a state that is not durable.
            self._doubt = None
            self.stats.n_conflicts += 1
            if isinstance(error, StoreConflictError):
                raise
            detail = str(error.orig).splitlines()[0] if error.orig is not None else str(error)
            raise StoreConflictError(n_changes, detail) from error

    def _done(self, n_changes: int) -> None:
        del self._inflight[:n_changes]
        self._n_done += n_changes

    async def _resolve_doubt(self) -> None:
        assert self._doubt is not None
        seq, n_changes = self._doubt
        found = await self._db.run(_read_commit_seq)
        self._doubt = None
        if int(found) == seq:
            log.info("interrupted commit %d of database %s had succeeded", seq, self._name)
            self._commit_seq = seq
            self._done(n_changes)

    def _check_lease(self, conn: Connection) -> None:
        holder = conn.execute(
            select(t.meta.c.value).where(t.meta.c.key == "lease").with_for_update()
        ).scalar_one()
        if holder != self._token:
            raise LeaseHeldError(self._name, holder)

    # --- writing ------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._is_postgres else sqlite.insert)(table)

    def _upsert(self, table: Any) -> Any:
        # Built once per table: constructing a statement costs more than executing the
        # cached compiled form, and commits are on the request path.
        cached = self._statements.get(table.name)
        if cached is None:
            cached = self._statements[table.name] = self._build_upsert(table)
        return cached

    def _set_meta(self) -> Any:
        """UPDATE of meta rows, executed with many (meta_key, meta_value) parameter sets."""
        cached = self._statements.get("meta")
        if cached is None:
            cached = self._statements["meta"] = (
                update(t.meta)
                .where(t.meta.c.key == bindparam("meta_key"))
                .values(value=bindparam("meta_value"))
            )
        return cached

    def _build_upsert(self, table: Any) -> Any:
        statement = self._insert(table)
        keys = [column.name for column in table.primary_key.columns]
        return statement.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
        )

    def _write(self, conn: Connection, batch: _Batch, seq: int) -> None:
        """Write a batch and the commit sequence number in one transaction (database side)."""
        if not self._is_postgres and not (
            batch.boards or batch.links or batch.machines or batch.audits
        ):
            # The commits of job traffic (nearly all of them): on the driver's connection.
            _sqlite_commit(conn, batch, seq, self._request_json)
            return
        with conn.begin():
            if self._is_postgres:
                self._check_lease(conn)
                self._write_hot_tables(conn, batch, seq)
            else:
                _sqlite_write_rows(conn.exec_driver_sql, batch, seq, self._request_json)
            if batch.forgets:
                conn.execute(delete(t.jobs).where(t.jobs.c.job_id.in_(batch.forgets)))
            if batch.boards:
                conn.execute(self._upsert(t.board_status), [_status_row(s) for s in batch.boards])
            if batch.links:
                conn.execute(self._upsert(t.link_status), [_link_row(s) for s in batch.links])
            if batch.machines:
                conn.execute(
                    self._upsert(t.machine_status), [_machine_row(s) for s in batch.machines]
                )
            if batch.audits:
                conn.execute(t.audit.insert(), [_audit_row(a) for a in batch.audits])

    def _write_hot_tables(self, conn: Connection, batch: _Batch, seq: int) -> None:
        """The tables every commit writes (jobs, claims, meta), through SQLAlchemy Core."""
        if batch.puts:
            conn.execute(self._upsert(t.jobs), [_job_row(r) for r in batch.puts])
        if batch.released:
            self._delete_claims(conn, batch.released)
        if batch.claimed:
            rows = [
                {"machine": m, "x": x, "y": y, "z": z, "job_id": j}
                for (m, x, y, z), j in batch.claimed.items()
            ]
            conn.execute(self._insert(t.board_claims), rows)
        conn.execute(self._set_meta(), _meta_rows(batch, seq))

    @staticmethod
    def _delete_claims(conn: Connection, keys: Iterable[tuple[str, int, int, int]]) -> None:
        by_machine: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for machine, x, y, z in keys:
            by_machine[machine].append((x, y, z))
        c = t.board_claims.c
        for machine, xyz in by_machine.items():
            conn.execute(
                delete(t.board_claims).where(c.machine == machine, tuple_(c.x, c.y, c.z).in_(xyz))
            )

    # --- reading ------------------------------------------------------------------------

    async def load(self, *, audit_limit: int = 1000) -> StoredState:
        """Read back everything persisted (committing whatever is staged first).

        Args:
            audit_limit: how many of the newest audit entries to return.

        Raises:
            StoreError: the database cannot be read.
        """
        await self.flush()
        async with self._round():
            await self._ensure_connected()
            try:
                return await self._db.run(_read, audit_limit)
            except DBAPIError as error:
                raise StoreError(f"cannot read database {self._name}: {error.orig}") from error

    def __repr__(self) -> str:
        return (
            f"Store({self._name!r}, pending={self.n_pending}, commits={self.stats.n_commits}, "
            f"broken={self._broken is not None})"
        )


def _error_text(error: BaseException) -> str:
    """A failure as the log shows it: the driver's own message, without the statement."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return f"{type(error.orig).__name__}: {error.orig}"
    return f"{type(error).__name__}: {error}"


def _job_row(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "owner": record.owner,
        "created_at": record.created_at,
        "keepalive_s": record.keepalive_s,
        "args": list(record.args),
        "kwargs": dict(record.kwargs),
        "state": int(record.state),
        "power": record.power,
        "machine_name": record.machine_name,
        "boards": [list(board) for board in record.boards],
        "width_chips": record.width_chips,
        "height_chips": record.height_chips,
        "reason": record.reason,
        "destroyed_at": record.destroyed_at,
        "keepalivehost": record.keepalivehost,
    }


def _job_record(row: Any) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        owner=row["owner"],
        created_at=row["created_at"],
        keepalive_s=row["keepalive_s"],
        args=tuple(row["args"]),
        kwargs=dict(row["kwargs"]),
        state=JobState(row["state"]),
        power=None if row["power"] is None else bool(row["power"]),
        machine_name=row["machine_name"],
        boards=tuple(BoardXYZ(*board) for board in row["boards"]),
        width_chips=row["width_chips"],
        height_chips=row["height_chips"],
        reason=row["reason"],
        destroyed_at=row["destroyed_at"],
        keepalivehost=row["keepalivehost"],
    )


def _status_row(status: BoardStatus | LinkStatus) -> dict[str, Any]:
    x, y, z = status.board
    return {
        "machine": status.machine,
        "x": x,
        "y": y,
        "z": z,
        "in_service": status.in_service,
        "reason": status.reason,
        "changed_at": status.changed_at,
        "changed_by": status.changed_by,
    }


def _link_row(status: LinkStatus) -> dict[str, Any]:
    return {**_status_row(status), "link": int(status.link)}


def _machine_row(status: MachineStatus) -> dict[str, Any]:
    return {
        "machine": status.machine,
        "is_draining": status.is_draining,
        "reason": status.reason,
        "changed_at": status.changed_at,
        "changed_by": status.changed_by,
    }


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    row = {
        "at": entry.at,
        "who": entry.who,
        "action": entry.action,
        "target": entry.target,
        "reason": entry.reason,
        "detail": dict(entry.detail),
    }
    if entry.audit_id is not None:
        # The service numbers its entries (it is the one writer) so that the id it answers
        # with is the id stored.
        row["id"] = entry.audit_id
    return row


def _read(conn: Connection, audit_limit: int) -> StoredState:
    """Everything persisted, in one read transaction (database side)."""
    with conn.begin():
        return _read_tables(conn, audit_limit)


def _read_tables(conn: Connection, audit_limit: int) -> StoredState:
    job_rows = (conn.execute(select(t.jobs).order_by(t.jobs.c.job_id))).mappings()
    records = tuple(_job_record(row) for row in job_rows)
    claim_rows = conn.execute(
        select(t.board_claims).order_by(
            t.board_claims.c.machine,
            t.board_claims.c.job_id,
            t.board_claims.c.x,
            t.board_claims.c.y,
            t.board_claims.c.z,
        )
    )
    grouped: dict[tuple[str, int], list[BoardXYZ]] = defaultdict(list)
    for row in claim_rows.mappings():
        grouped[(row["machine"], row["job_id"])].append(BoardXYZ(row["x"], row["y"], row["z"]))
    claims = tuple(
        BoardClaim(machine, job_id, tuple(sorted(boards)))
        for (machine, job_id), boards in sorted(grouped.items())
    )
    stored_next = (
        conn.execute(select(t.meta.c.value).where(t.meta.c.key == "next_job_id"))
    ).scalar_one()
    next_job_id = max([int(stored_next), *(r.job_id + 1 for r in records)])
    board_rows = conn.execute(select(t.board_status))
    statuses = tuple(
        BoardStatus(
            r["machine"],
            BoardXYZ(r["x"], r["y"], r["z"]),
            bool(r["in_service"]),
            r["reason"],
            r["changed_at"],
            r["changed_by"],
        )
        for r in board_rows.mappings()
    )
    link_rows = conn.execute(select(t.link_status))
    link_statuses = tuple(
        LinkStatus(
            r["machine"],
            BoardXYZ(r["x"], r["y"], r["z"]),
            Link(r["link"]),
            bool(r["in_service"]),
            r["reason"],
            r["changed_at"],
            r["changed_by"],
        )
        for r in link_rows.mappings()
    )
    audit_rows = conn.execute(select(t.audit).order_by(t.audit.c.id.desc()).limit(audit_limit))
    entries = tuple(
        AuditEntry(
            r["at"],
            r["who"],
            r["action"],
            r["target"],
            r["reason"],
            dict(r["detail"]),
            r["id"],
        )
        for r in reversed(list(audit_rows.mappings()))
    )
    machine_rows = conn.execute(select(t.machine_status).order_by(t.machine_status.c.machine))
    machine_statuses = tuple(
        MachineStatus(
            r["machine"], bool(r["is_draining"]), r["reason"], r["changed_at"], r["changed_by"]
        )
        for r in machine_rows.mappings()
    )
    return StoredState(
        records, claims, next_job_id, statuses, link_statuses, entries, machine_statuses
    )


def _read_commit_seq(conn: Connection) -> int:
    with conn.begin():
        value = conn.execute(
            select(t.meta.c.value).where(t.meta.c.key == "commit_seq")
        ).scalar_one()
    return int(value)


@dataclass(slots=True)
class _Batch:
    """The net effect of a run of changes: what one transaction writes."""

    puts: list[JobRecord]
    forgets: list[int]
    released: set[tuple[str, int, int, int]]
    claimed: dict[tuple[str, int, int, int], int]
    boards: list[BoardStatus]
    links: list[LinkStatus]
    machines: list[MachineStatus]
    audits: list[AuditEntry]
    next_job_id: int | None


def _net_effect(changes: Sequence[Change]) -> _Batch:
    """Fold changes into their net effect, keeping each key's last change.

    Per table only the net effect matters: the last write of a job, a board status or a
    link status wins. Claims keep their order: a board released and claimed again in one
    batch is deleted first and inserted after.

    Raises:
        StoreConflictError: two changes claim the same board (nothing is written).
    """
    jobs: dict[int, JobRecord | None] = {}
    released: set[tuple[str, int, int, int]] = set()
    claimed: dict[tuple[str, int, int, int], int] = {}
    boards: dict[tuple[str, int, int, int], BoardStatus] = {}
    links: dict[tuple[str, int, int, int, int], LinkStatus] = {}
    machines: dict[str, MachineStatus] = {}
    audits: list[AuditEntry] = []
    next_job_id: int | None = None
    for change in changes:
        match change:
            case PutJob(record):
                jobs[record.job_id] = record
            case ForgetJobs(job_ids):
                jobs.update(dict.fromkeys(job_ids))
            case ClaimBoards(machine, claim_boards, job_id):
                for board in claim_boards:
                    key = (machine, board[0], board[1], board[2])
                    if key in claimed:
                        raise StoreConflictError(
                            len(changes),
                            f"board {tuple(key[1:])} of {machine} claimed by jobs "
                            f"{claimed[key]} and {job_id}",
                        )
                    claimed[key] = job_id
            case ReleaseBoards(machine, release_boards):
                for board in release_boards:
                    key = (machine, board[0], board[1], board[2])
                    released.add(key)
                    claimed.pop(key, None)
            case SetNextJobId(n):
                next_job_id = n
            case PutBoardStatus(status):
                boards[(status.machine, *status.board)] = status
            case PutLinkStatus(status):
                links[(status.machine, *status.board, int(status.link))] = status
            case PutMachineStatus(status):
                machines[status.machine] = status
            case AppendAudit(entry):
                audits.append(entry)
    return _Batch(
        puts=[r for r in jobs.values() if r is not None],
        forgets=[job_id for job_id, r in jobs.items() if r is None],
        released=released,
        claimed=claimed,
        boards=list(boards.values()),
        links=list(links.values()),
        machines=list(machines.values()),
        audits=audits,
        next_job_id=next_job_id,
    )


def _meta_rows(batch: _Batch, seq: int) -> list[dict[str, str]]:
    rows = [{"meta_key": "commit_seq", "meta_value": str(seq)}]
    if batch.next_job_id is not None:
        rows.append({"meta_key": "next_job_id", "meta_value": str(batch.next_job_id)})
    return rows


def _sqlite_upsert_sql(table: Any) -> str:
    quote = sqlite.dialect().identifier_preparer.quote
    columns = [column.name for column in table.columns]
    keys = [column.name for column in table.primary_key.columns]
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) "
        f"VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({', '.join(map(quote, keys))}) DO UPDATE SET {updates}"
    )


_SQLITE_UPSERT_JOB = _sqlite_upsert_sql(t.jobs)
_CLAIMS = t.board_claims.name
_SQLITE_CLAIM = f"INSERT INTO {_CLAIMS} (machine, x, y, z, job_id) VALUES (?, ?, ?, ?, ?)"
_SQLITE_RELEASE = f"DELETE FROM {_CLAIMS} WHERE machine = ? AND x = ? AND y = ? AND z = ?"
_SQLITE_SET_META = f'UPDATE {t.meta.name} SET "value" = ? WHERE "key" = ?'
_SQLITE_FORGET = f"DELETE FROM {t.jobs.name} WHERE job_id = ?"
_JOB_JSON_COLUMNS = frozenset(c.name for c in t.jobs.columns if isinstance(c.type, JSON))


class RequestJson:
    """The JSON text of what job rows repeat, kept so that each is encoded once.

    A job's arguments never change and every record of a job shares the same objects, so
    they are kept per live job (job id -> (args, kwargs, their JSON)). The allocator hands
    out the same regions again and again, and a job's records share its boards tuple, so
    board lists are kept by that tuple (a bounded number of them). Used in the database
    thread only.
    """

    _MAX_BOARD_LISTS = 4096

    def __init__(self) -> None:
        self.requests: dict[int, tuple[object, object, str, str]] = {}
        self._boards: dict[int, tuple[tuple[BoardXYZ, ...], str]] = {}

    def boards(self, boards: tuple[BoardXYZ, ...]) -> str:
        """`boards` as SQLAlchemy's JSON type stores a list of [x, y, z] lists."""
        cached = self._boards.get(id(boards))
        if cached is not None and cached[0] is boards:
            return cached[1]
        if len(self._boards) >= self._MAX_BOARD_LISTS:
            self._boards.clear()
        text = json_text([list(board) for board in boards])
        # Keyed by identity and holding the tuple, so its id cannot be reused meanwhile.
        self._boards[id(boards)] = (boards, text)
        return text


def _sqlite_job_values(record: JobRecord, request_json: RequestJson) -> tuple[Any, ...]:
    """A job's row in the jobs table's column order, as SQLAlchemy's JSON type would store it on
    SQLite (json.dumps text), so that rows written either way read back the same."""
    cached = request_json.requests.get(record.job_id)
    if cached is None or cached[0] is not record.args or cached[1] is not record.kwargs:
        cached = (
            record.args,
            record.kwargs,
            json_text(list(record.args)),
            json_text(dict(record.kwargs)),
        )
    if record.is_live:
        request_json.requests[record.job_id] = cached
    else:
        request_json.requests.pop(record.job_id, None)
    return (
        record.job_id,
        record.owner,
        record.created_at,
        record.keepalive_s,
        cached[2],
        cached[3],
        int(record.state),
        record.power,
        record.machine_name,
        request_json.boards(record.boards),
        record.width_chips,
        record.height_chips,
        record.reason,
        record.destroyed_at,
        record.keepalivehost,
    )


def _sqlite_write_rows(
    executemany: Callable[[str, list[Any]], object],
    batch: _Batch,
    seq: int,
    request_json: RequestJson,
) -> None:
    """The tables every commit writes, as plain driver statements (SQLite).

    The same rows as `Store._write_hot_tables`, without SQLAlchemy's per-statement work:
    that runs in the database thread holding the interpreter lock the event loop needs.
    """
    if batch.puts:
        executemany(_SQLITE_UPSERT_JOB, [_sqlite_job_values(r, request_json) for r in batch.puts])
    if batch.released:
        executemany(_SQLITE_RELEASE, list(batch.released))
    if batch.claimed:
        executemany(_SQLITE_CLAIM, [(m, x, y, z, j) for (m, x, y, z), j in batch.claimed.items()])
    executemany(
        _SQLITE_SET_META, [(r["meta_value"], r["meta_key"]) for r in _meta_rows(batch, seq)]
    )


def _sqlite_commit(conn: Connection, batch: _Batch, seq: int, request_json: RequestJson) -> None:
    """One transaction of jobs, claims, forgotten jobs and meta rows on the driver's own
    connection (SQLite).

    SQLAlchemy's transaction and statement machinery cost more of the database thread than
    SQLite itself for these small commits (229 against ~90 us for a commit of four jobs),
    and the thread holds the interpreter lock the event loop needs while it runs. The rows
    are those of the SQLAlchemy path; a driver error is raised as SQLAlchemy would raise it
    (`DBAPIError.instance`), so retries and conflicts are told apart the same way.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    statement = "BEGIN IMMEDIATE"

    def executemany(sql: str, rows: list[Any]) -> None:
        nonlocal statement
        statement = sql
        driver.executemany(sql, rows)

    try:
        driver.execute(statement)
        _sqlite_write_rows(executemany, batch, seq, request_json)
        if batch.forgets:
            executemany(_SQLITE_FORGET, [(job_id,) for job_id in batch.forgets])
        statement = "COMMIT"
        driver.execute(statement)
    except BaseException as error:
        if driver.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error that came first is the one
                driver.rollback()
        if not isinstance(error, sqlite3.Error):
            raise
        # The dialect's own test of a lost connection ("Cannot operate on a closed
        # database"), so that it is retried on a new connection as on the SQLAlchemy path.
        raise DBAPIError.instance(
            statement,
            None,
            error,
            sqlite3.Error,
            hide_parameters=True,
            connection_invalidated=conn.dialect.is_disconnect(
                cast(Any, error), conn.connection, None
            ),
            dialect=conn.dialect,
        ) from error
