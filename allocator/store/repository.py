"""The durable store: one writer connection, group commit, and the writer lease.

`Store.open(url)` connects (SQLite through aiosqlite by default, or PostgreSQL through
asyncpg), takes the writer lease, creates or checks the schema. The service then calls
`stage(change)` (sync, cheap) and `await flush()`, which returns once everything staged
before the call is committed.

Group commit without a background task: `flush` takes the writer lock; whoever holds it
commits *everything* staged so far in one transaction, so the flushers queued behind it
usually find their changes already durable::

    flush A --[lock: commit a1]-----------> return
    flush B    (stages b1, waits) --[lock: commit b1 c1]--> return
    flush C    (stages c1, waits) ---------------------[lock: nothing left]--> return

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
import fcntl
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from sqlalchemy import Connection as SyncConnection
from sqlalchemy import bindparam, delete, event, inspect, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
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
from machine_models.geometry import BoardXYZ, Link

__all__ = ["Store"]

log = logging.getLogger("allotment.store")

# The PostgreSQL advisory lock key of the writer lease ("allo" in ASCII); advisory locks are
# per database, so one key serves every database on a server.
_PG_LEASE_KEY = 0x616C6C6F

_TRANSIENT = (OperationalError, ConnectionError, OSError, TimeoutError)

Synchronous = Literal["normal", "full"]


@dataclass(frozen=True, slots=True)
class _Failure:
    start: int
    end: int
    error: StoreError


_UPGRADABLE = frozenset({1})
"""Older schema versions that opening a database upgrades in place."""

_DRAIN_ACTIONS = ("admin_drain_machine", "admin_undrain_machine")


def _describe(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _normalise(url: URL) -> URL:
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    return url.set(drivername=driver.get(url.drivername, url.drivername))


class Store:
    """The durable state of the service in one SQL database.

    Use `await Store.open(url)`, never the constructor. Not safe to share between event
    loops; one `Store` per process and database.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        url: URL,
        *,
        lock_file: IO[bytes] | None,
        max_attempts: int,
        retry_backoff_s: float,
        on_commit: Callable[[float, int], None] | None,
    ) -> None:
        self._engine = engine
        self._url = url
        self._name = _describe(url)
        self._is_postgres = url.get_backend_name() == "postgresql"
        self._lock_file = lock_file
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._on_commit = on_commit
        self._token = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._staged: list[Change] = []
        self._inflight: list[Change] = []
        self._n_staged = 0
        self._n_done = 0
        self._commit_seq = 0
        self._doubt: tuple[int, int] | None = None
        self._failures: list[_Failure] = []
        self._broken: StoreError | None = None
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
        max_attempts: int = 8,
        retry_backoff_s: float = 0.05,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> Store:
        """Connect, take the writer lease and create (or check) the schema.

        Args:
            url: an SQLAlchemy URL: "sqlite+aiosqlite:///path.db" (plain "sqlite:" works
                too) or "postgresql+asyncpg://user@host/db".
            synchronous: SQLite only: "normal" survives a process crash (kill -9), "full"
                also a power cut, at the price of an fsync per commit.
            max_attempts: how often a commit is tried on transient errors before the store
                gives up and reports `StoreError` from then on.
            retry_backoff_s: the first pause between attempts; it doubles each time.
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
        if backend == "sqlite":
            engine = cls._sqlite_engine(parsed, synchronous)
            if parsed.database not in (None, "", ":memory:"):
                lock_file = cls._take_file_lease(str(parsed.database), _describe(parsed))
        else:
            engine = create_async_engine(parsed, poolclass=NullPool)
        store = cls(
            engine,
            parsed,
            lock_file=lock_file,
            max_attempts=max_attempts,
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
    def _sqlite_engine(url: URL, synchronous: Synchronous) -> AsyncEngine:
        is_memory = url.database in (None, "", ":memory:")
        engine = create_async_engine(
            url, poolclass=StaticPool if is_memory else NullPool, connect_args={"timeout": 30}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Take BEGIN out of the driver's hands so that `_begin` can say IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: SyncConnection) -> None:
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
            conn = await self._engine.connect()
        except DBAPIError as error:
            raise StoreError(f"cannot connect to database {self._name}: {error.orig}") from error
        except OSError as error:
            raise StoreError(f"cannot connect to database {self._name}: {error}") from error
        try:
            if self._is_postgres:
                is_locked = (
                    await conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({_PG_LEASE_KEY})")
                ).scalar()
                await conn.commit()
                if not is_locked:
                    raise LeaseHeldError(self._name, await self._lease_holder(conn))
            async with conn.begin():
                await self._prepare_schema(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _lease_holder(self, conn: AsyncConnection) -> str | None:
        try:
            async with conn.begin():
                row = await conn.execute(select(t.meta.c.value).where(t.meta.c.key == "lease"))
                return row.scalar()
        except DBAPIError:
            return None

    async def _prepare_schema(self, conn: AsyncConnection) -> None:
        has_meta = await conn.run_sync(lambda sync: inspect(sync).has_table(t.meta.name))
        values: dict[str, str] = {}
        found = t.SCHEMA_VERSION
        if has_meta:
            rows = await conn.execute(select(t.meta.c.key, t.meta.c.value))
            values = {key: value for key, value in rows.all()}
            found = int(values.get("schema_version", t.SCHEMA_VERSION))
            if found not in _UPGRADABLE and found != t.SCHEMA_VERSION:
                raise SchemaVersionError(self._name, found, t.SCHEMA_VERSION)
        await conn.run_sync(t.metadata.create_all)  # creates the tables a version lacks
        if found in _UPGRADABLE:
            await self._upgrade_from_1(conn)
            await conn.execute(
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
            await conn.execute(t.meta.insert(), missing)
        await conn.execute(update(t.meta).where(t.meta.c.key == "lease").values(value=self._token))
        self._commit_seq = int(values.get("commit_seq", "0"))

    @staticmethod
    async def _upgrade_from_1(conn: AsyncConnection) -> None:
        """Version 1 kept drains only in the audit log: their net effect seeds the table."""
        rows = await conn.execute(
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
            await conn.execute(
                t.machine_status.insert(), [_machine_row(s) for s in latest.values()]
            )

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
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except (DBAPIError, OSError) as error:
                log.warning("closing database %s: %s", self._name, error)
        await self._engine.dispose()
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
            StoreConflictError: the database refused a transaction holding some of those
                changes (a bug upstream; the changes were dropped).
            StoreError: the database stayed unreachable for `max_attempts` attempts; the
                store refuses everything from then on.
        """
        self._check_usable()
        start, target = self._n_done, self._n_staged
        while self._n_done < target:
            async with self._lock:
                self._check_usable()
                if self._n_done < target:
                    await self._commit_with_retry()
        for failure in self._failures:
            if failure.start < target and start < failure.end:
                raise failure.error

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

    async def _commit_with_retry(self) -> None:
        backoff_s = self._retry_backoff_s
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._commit_round()
                return
            except LeaseHeldError as error:
                self._broken = error
                raise
            except (*_TRANSIENT, DBAPIError) as error:
                if isinstance(error, DBAPIError) and not (
                    isinstance(error, OperationalError) or error.connection_invalidated
                ):
                    raise
                self.stats.n_retries += 1
                log.warning(
                    "commit to database %s failed (attempt %d of %d): %s",
                    self._name,
                    attempt,
                    self._max_attempts,
                    error,
                )
                await self._drop_connection()
                if attempt == self._max_attempts:
                    self._broken = StoreError(
                        f"database {self._name} failed {attempt} commits in a row: {error}"
                    )
                    raise self._broken from error
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.invalidate()
                await conn.close()
            except (DBAPIError, OSError):
                pass

    async def _writer(self) -> AsyncConnection:
        if self._conn is None:
            await self._connect()
        assert self._conn is not None
        return self._conn

    async def _commit_round(self) -> None:
        """Commit everything in flight or staged in one transaction (lock held)."""
        conn = await self._writer()
        if self._doubt is not None:
            await self._resolve_doubt(conn)
        self._inflight.extend(self._staged)
        self._staged.clear()
        n_changes = len(self._inflight)
        if not n_changes:
            return
        seq = self._commit_seq + 1
        self._doubt = (seq, n_changes)
        started = time.perf_counter()
        try:
            async with conn.begin():
                if self._is_postgres:
                    await self._check_lease(conn)
                meta = await self._apply(conn, self._inflight)
                meta.append({"meta_key": "commit_seq", "meta_value": str(seq)})
                await conn.execute(self._set_meta(), meta)
        except (IntegrityError, StoreConflictError) as error:
            # Constraints are checked before COMMIT: the transaction is rolled back for sure.
            self._doubt = None
            if isinstance(error, StoreConflictError):
                conflict = error
            else:
                detail = str(error.orig).splitlines()[0] if error.orig is not None else str(error)
                conflict = StoreConflictError(n_changes, detail)
            self.stats.n_conflicts += 1
            log.error("%s", conflict)
            self._failures = [f for f in self._failures if f.end > self._n_done - 10_000]
            self._failures.append(_Failure(self._n_done, self._n_done + n_changes, conflict))
            self._done(n_changes)
            return
        elapsed_s = time.perf_counter() - started
        self._doubt = None
        self._commit_seq = seq
        self._done(n_changes)
        self.stats.n_commits += 1
        self.stats.n_changes += n_changes
        self.stats.commit_s_total += elapsed_s
        self.stats.last_commit_s = elapsed_s
        if self._on_commit is not None:
            self._on_commit(elapsed_s, n_changes)

    def _done(self, n_changes: int) -> None:
        del self._inflight[:n_changes]
        self._n_done += n_changes

    async def _resolve_doubt(self, conn: AsyncConnection) -> None:
        assert self._doubt is not None
        seq, n_changes = self._doubt
        async with conn.begin():
            found = (
                await conn.execute(select(t.meta.c.value).where(t.meta.c.key == "commit_seq"))
            ).scalar_one()
        self._doubt = None
        if int(found) == seq:
            log.info("interrupted commit %d of database %s had succeeded", seq, self._name)
            self._commit_seq = seq
            self._done(n_changes)

    async def _check_lease(self, conn: AsyncConnection) -> None:
        holder = (
            await conn.execute(
                select(t.meta.c.value).where(t.meta.c.key == "lease").with_for_update()
            )
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

    async def _apply(
        self, conn: AsyncConnection, changes: Sequence[Change]
    ) -> list[dict[str, str]]:
        """Write a batch with a few statements per table, keeping each key's last change.

        Returns the meta rows to update, for the caller to write with its own in one
        statement.

        Per table only the net effect matters: the last write of a job, a board status or a
        link status wins. Claims keep their order: a board released and claimed again in
        one batch is deleted first and inserted after.
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
        puts = [_job_row(r) for r in jobs.values() if r is not None]
        forgets = [job_id for job_id, r in jobs.items() if r is None]
        if puts:
            await conn.execute(self._upsert(t.jobs), puts)
        if forgets:
            await conn.execute(delete(t.jobs).where(t.jobs.c.job_id.in_(forgets)))
        if released:
            await self._delete_claims(conn, released)
        if claimed:
            rows = [
                {"machine": m, "x": x, "y": y, "z": z, "job_id": j}
                for (m, x, y, z), j in claimed.items()
            ]
            await conn.execute(self._insert(t.board_claims), rows)
        meta: list[dict[str, str]] = []
        if next_job_id is not None:
            meta.append({"meta_key": "next_job_id", "meta_value": str(next_job_id)})
        if boards:
            await conn.execute(
                self._upsert(t.board_status), [_status_row(s) for s in boards.values()]
            )
        if links:
            await conn.execute(self._upsert(t.link_status), [_link_row(s) for s in links.values()])
        if machines:
            await conn.execute(
                self._upsert(t.machine_status), [_machine_row(s) for s in machines.values()]
            )
        if audits:
            await conn.execute(t.audit.insert(), [_audit_row(a) for a in audits])
        return meta

    async def _delete_claims(
        self, conn: AsyncConnection, keys: Iterable[tuple[str, int, int, int]]
    ) -> None:
        by_machine: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for machine, x, y, z in keys:
            by_machine[machine].append((x, y, z))
        c = t.board_claims.c
        for machine, xyz in by_machine.items():
            await conn.execute(
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
        async with self._lock:
            conn = await self._writer()
            try:
                async with conn.begin():
                    return await self._read(conn, audit_limit)
            except DBAPIError as error:
                raise StoreError(f"cannot read database {self._name}: {error.orig}") from error

    async def _read(self, conn: AsyncConnection, audit_limit: int) -> StoredState:
        job_rows = (await conn.execute(select(t.jobs).order_by(t.jobs.c.job_id))).mappings()
        records = tuple(_job_record(row) for row in job_rows)
        claim_rows = await conn.execute(
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
            await conn.execute(select(t.meta.c.value).where(t.meta.c.key == "next_job_id"))
        ).scalar_one()
        next_job_id = max([int(stored_next), *(r.job_id + 1 for r in records)])
        board_rows = await conn.execute(select(t.board_status))
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
        link_rows = await conn.execute(select(t.link_status))
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
        audit_rows = await conn.execute(
            select(t.audit).order_by(t.audit.c.id.desc()).limit(audit_limit)
        )
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
        machine_rows = await conn.execute(
            select(t.machine_status).order_by(t.machine_status.c.machine)
        )
        machine_statuses = tuple(
            MachineStatus(
                r["machine"], bool(r["is_draining"]), r["reason"], r["changed_at"], r["changed_by"]
            )
            for r in machine_rows.mappings()
        )
        return StoredState(
            records, claims, next_job_id, statuses, link_statuses, entries, machine_statuses
        )

    def __repr__(self) -> str:
        return (
            f"Store({self._name!r}, pending={self.n_pending}, commits={self.stats.n_commits}, "
            f"broken={self._broken is not None})"
        )


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
