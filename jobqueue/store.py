"""The batch service's durable state: tokens, jobs, logs, outputs, comments, projects, quotas.

One `JobStore` per process over a synchronous SQLAlchemy engine (SQLite through the standard
library's driver, PostgreSQL through psycopg), shared by the HTTP handlers (FastAPI runs them
in its thread pool) and the runner's threads. Every method is one short transaction, so a
`kill -9` loses nothing that was answered.

Taking a job is a compare-and-set (`UPDATE ... WHERE status = 'submitted'`), so two runners
can never both run it; on PostgreSQL the candidate is picked `FOR UPDATE SKIP LOCKED`, so
runner processes on many hosts take different jobs without waiting on each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Connection, make_url

from jobqueue import tables
from jobqueue.bodies import check_text
from jobqueue.errors import BadRequestError, NoSuchJobError, QuotaExhaustedError

__all__ = [
    "ACTIVE_STATUSES",
    "DEMO_QUOTA_CORE_HOURS",
    "FINAL_STATUSES",
    "TOKEN_PREFIX",
    "Identity",
    "JobStore",
    "OutputFile",
    "error_block",
    "sync_url",
    "units_of",
]

FINAL_STATUSES = ("finished", "error")
ACTIVE_STATUSES = ("validated", "running")
DEMO_QUOTA_CORE_HOURS = 5000.0
TOKEN_PREFIX = "allot_"
"""The start of every token minted here."""
"""The quota of the demo project created on a collab's first use (the real platform's)."""

_UNITS = {"SpiNNaker": "core-hours", "BrainScaleS": "wafer-hours", "BrainScaleS-2": "chip-hours"}


def units_of(platform: str) -> str:
    """The unit in which a platform's usage is counted, as the real service names it."""
    return _UNITS.get(platform, "hours")


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to: a user and the collabs they are an editor of."""

    user: str
    collabs: tuple[str, ...]

    def can_access(self, collab: str) -> bool:
        """Whether the user may see and change the jobs of `collab`."""
        return collab == f"private-{self.user}" or collab in self.collabs


@dataclass(frozen=True)
class OutputFile:
    """One file a job produced, relative to its working directory."""

    path: str
    size: int
    hash: str
    content_type: str


def sync_url(url: str) -> str:
    """The synchronous SQLAlchemy URL for the allocation server's database URL.

    The allocation server names PostgreSQL with the asyncpg driver and accepts
    `sqlite+aiosqlite:`; this service talks to the same database synchronously.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise BadRequestError(f"database {parsed.drivername!r} is not supported (SQLite or PostgreSQL)")


MAX_COLLAB_CHARS = 200
"""The longest collab name the tables hold."""
MAX_USER_CHARS = MAX_COLLAB_CHARS - len("private-")
"""The longest user name: its private collab, "private-<user>", must fit too."""


def _check_name(name: str, what: str, max_chars: int) -> None:
    if not name or len(name) > max_chars:
        raise BadRequestError(f"a {what} is 1 to {max_chars} characters, not {len(name)}")
    try:
        check_text(name, f"the {what}")
    except ValueError as error:
        raise BadRequestError(str(error)) from None


def _lock_key(collab: str, platform: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for one collab's platform."""
    digest = hashlib.sha256(f"nmpi quota\0{collab}\0{platform}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_WRITE = "jobqueue_write"
"""The execution option that marks a connection's transaction as one that writes."""


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA case_sensitive_like=ON")  # tags match as PostgreSQL matches them
    cursor.close()
    # The transactions are begun by `_on_sqlite_begin`, not by the driver, which would begin
    # one only at its first write: after the reads it decides on.
    dbapi_connection.isolation_level = None


def _on_sqlite_begin(conn: Connection) -> None:
    """Begin a write transaction IMMEDIATE: it holds the write lock from its first read, so
    that what it read (no quota yet, a job still running) cannot change before it writes.
    Read transactions begin deferred and wait for nobody."""
    is_write = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if is_write else "BEGIN")


class JobStore:
    """The batch service's tables in one database; every method is one transaction."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock
        self.is_postgres = engine.dialect.name == "postgresql"

    @classmethod
    def open(cls, url: str, clock: Callable[[], float] = time.time) -> JobStore:
        """Connect to the database named by `url` and create the `nmpi_` tables if missing."""
        engine = create_engine(sync_url(url), pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _on_sqlite_connect)
            event.listen(engine, "begin", _on_sqlite_begin)
        tables.metadata.create_all(engine)
        return cls(engine, clock)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One transaction that writes (IMMEDIATE on SQLite: see `_on_sqlite_begin`)."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @property
    def database_path(self) -> str | None:
        """The SQLite file, which the sandbox hides from jobs; None for PostgreSQL."""
        if self.engine.dialect.name != "sqlite":
            return None
        database = self.engine.url.database
        return None if not database or database == ":memory:" else os.path.abspath(database)

    # tokens ---------------------------------------------------------------------------------

    def create_token(self, user: str, collabs: Sequence[str]) -> str:
        """Mint a token for `user`, editor of `collabs`; only its hash is stored."""
        if not user:
            raise BadRequestError("a token needs a user name")
        _check_name(user, "user name", MAX_USER_CHARS)
        for collab in collabs:
            _check_name(collab, "collab name", MAX_COLLAB_CHARS)
        # a fixed prefix: a token is recognisable (to a secret scanner too) and never begins
        # with "-", which a command line would take for an option
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._writing() as conn:
            conn.execute(
                insert(tables.tokens).values(
                    token_hash=_hash_token(token),
                    user_id=user,
                    collabs=json.dumps(list(collabs)),
                    created_at=self._clock(),
                    is_revoked=False,
                )
            )
        return token

    def revoke_token(self, token: str) -> bool:
        """Revoke a token; False when it was not known."""
        with self._writing() as conn:
            result = conn.execute(
                update(tables.tokens)
                .where(tables.tokens.c.token_hash == _hash_token(token))
                .values(is_revoked=True)
            )
        return result.rowcount > 0

    def identity(self, token: str) -> Identity | None:
        """The owner of a live token, or None for an unknown or revoked one."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tables.tokens).where(tables.tokens.c.token_hash == _hash_token(token))
            ).first()
        if row is None or row.is_revoked:
            return None
        return Identity(row.user_id, tuple(json.loads(row.collabs)))

    # projects and quotas -------------------------------------------------------------------

    def _ensure_quota(self, conn: Connection, collab: str, platform: str, owner: str) -> None:
        """Create the demo project on a collab's first use of a platform; refuse when used up."""
        if self.is_postgres:
            # Two first jobs of a collab would each find no quota and make a demo project:
            # the second waits here until the first commits (SQLite's IMMEDIATE does this).
            conn.execute(select(func.pg_advisory_xact_lock(_lock_key(collab, platform))))
        rows = _quota_rows(conn, collab, platform)
        if not rows:
            now = self._clock()
            project_id = str(uuid.uuid4())
            conn.execute(
                insert(tables.projects).values(
                    id=project_id,
                    collab=collab,
                    title=f"Demo project for {collab}",
                    abstract="Created automatically on the collab's first job.",
                    description=None,
                    owner=owner,
                    status="accepted",
                    submission_date=now,
                    decision_date=now,
                )
            )
            conn.execute(
                insert(tables.quotas).values(
                    project_id=project_id,
                    platform=platform,
                    units=units_of(platform),
                    limit=DEMO_QUOTA_CORE_HOURS,
                    usage=0.0,
                )
            )
            return
        if not _has_room(rows):
            raise QuotaExhaustedError(collab, platform)

    def projects(self, collab: str | None, status: str | None) -> list[dict[str, Any]]:
        """Projects (resource requests) with their quotas, filtered by collab and status."""
        query = select(tables.projects).order_by(tables.projects.c.submission_date)
        if collab is not None:
            query = query.where(tables.projects.c.collab == collab)
        if status is not None:
            query = query.where(tables.projects.c.status == status)
        with self.engine.connect() as conn:
            found = [dict(r._mapping) for r in conn.execute(query)]
            for project in found:
                project["quotas"] = [
                    dict(q._mapping)
                    for q in conn.execute(
                        select(tables.quotas)
                        .where(tables.quotas.c.project_id == project["id"])
                        .order_by(tables.quotas.c.id)
                    )
                ]
        return found

    def project(self, project_id: str) -> dict[str, Any] | None:
        """One project with its quotas, or None."""
        found = [p for p in self.projects(None, None) if p["id"] == project_id]
        return found[0] if found else None

    def create_project(
        self,
        collab: str,
        owner: str,
        title: str,
        abstract: str,
        description: str | None,
        status: str,
    ) -> str:
        """Record a resource request; returns its id."""
        project_id = str(uuid.uuid4())
        with self._writing() as conn:
            conn.execute(
                insert(tables.projects).values(
                    id=project_id,
                    collab=collab,
                    title=title,
                    abstract=abstract,
                    description=description,
                    owner=owner,
                    status=status,
                    submission_date=self._clock() if status == "under review" else None,
                    decision_date=None,
                )
            )
        return project_id

    def update_project(self, project_id: str, values: Mapping[str, Any]) -> None:
        """Change a project's title, abstract, description or status; one submitted for review
        is dated then (as `create_project` dates one created for review)."""
        changes = dict(values)
        with self._writing() as conn:
            if changes.get("status") == "under review":
                dated = conn.execute(
                    select(tables.projects.c.submission_date).where(
                        tables.projects.c.id == project_id
                    )
                ).scalar()
                if dated is None:
                    changes["submission_date"] = self._clock()
            conn.execute(
                update(tables.projects).where(tables.projects.c.id == project_id).values(**changes)
            )

    def delete_project(self, project_id: str) -> None:
        """Delete a project and its quotas."""
        with self._writing() as conn:
            conn.execute(delete(tables.quotas).where(tables.quotas.c.project_id == project_id))
            conn.execute(delete(tables.projects).where(tables.projects.c.id == project_id))

    def set_quota(self, collab: str, platform: str, limit: float) -> None:
        """Set the limit of a collab's quota on a platform (creating the demo project first)."""
        with self._writing() as conn:
            self._ensure_quota_rows(conn, collab, platform)
            conn.execute(
                update(tables.quotas)
                .where(
                    tables.quotas.c.platform == platform,
                    tables.quotas.c.project_id.in_(
                        select(tables.projects.c.id).where(tables.projects.c.collab == collab)
                    ),
                )
                .values(limit=limit)
            )

    def _ensure_quota_rows(self, conn: Connection, collab: str, platform: str) -> None:
        with contextlib.suppress(QuotaExhaustedError):
            self._ensure_quota(conn, collab, platform, "operator")

    # jobs -----------------------------------------------------------------------------------

    def submit(self, identity: Identity, values: Mapping[str, Any]) -> dict[str, Any]:
        """Queue a job after the quota check; returns its row."""
        with self._writing() as conn:
            self._ensure_quota(conn, values["collab"], values["hardware_platform"], identity.user)
            job_id = conn.execute(
                insert(tables.jobs)
                .values(
                    code=values["code"],
                    command=values.get("command"),
                    collab=values["collab"],
                    hardware_platform=values["hardware_platform"],
                    hardware_config=_json_or_none(values.get("hardware_config")),
                    tags=json.dumps(list(values.get("tags") or [])),
                    input_data=_json_or_none(values.get("input_data")),
                    user_id=identity.user,
                    status="submitted",
                    timestamp_submission=self._clock(),
                    log="",
                    output_key=secrets.token_urlsafe(24),
                    is_charged=False,
                )
                .returning(tables.jobs.c.id)
            ).scalar_one()
        return self.job(job_id)

    def job(self, job_id: int) -> dict[str, Any]:
        """A job's row, decoded; raises NoSuchJobError."""
        with self.engine.connect() as conn:
            row = conn.execute(select(tables.jobs).where(tables.jobs.c.id == job_id)).first()
            if row is None:
                raise NoSuchJobError(job_id)
            return self._decode(conn, dict(row._mapping))

    def job_by_output_key(self, output_key: str) -> dict[str, Any] | None:
        """The job whose outputs are published under `output_key`, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tables.jobs).where(tables.jobs.c.output_key == output_key)
            ).first()
            return None if row is None else self._decode(conn, dict(row._mapping))

    def _decode(self, conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
        for key in ("hardware_config", "input_data", "provenance"):
            job[key] = None if job[key] is None else json.loads(job[key])
        job["tags"] = json.loads(job["tags"])
        job["outputs"] = [
            OutputFile(r.path, r.size, r.hash, r.content_type)
            for r in conn.execute(
                select(tables.outputs)
                .where(tables.outputs.c.job_id == job["id"])
                .order_by(tables.outputs.c.id)
            )
        ]
        job["comments"] = [
            dict(r._mapping)
            for r in conn.execute(
                select(tables.comments)
                .where(tables.comments.c.job_id == job["id"])
                .order_by(tables.comments.c.id)
            )
        ]
        job["queue_position"] = None
        if job["status"] == "submitted":
            job["queue_position"] = conn.execute(
                select(func.count())
                .select_from(tables.jobs)
                .where(tables.jobs.c.status == "submitted", tables.jobs.c.id <= job["id"])
            ).scalar_one()
        return job

    def jobs(
        self,
        *,
        collabs: Iterable[str] | None = None,
        user_ids: Iterable[str] | None = None,
        statuses: Iterable[str] = (),
        tags: Iterable[str] = (),
        platforms: Iterable[str] = (),
        submitted_from: float | None = None,
        submitted_until: float | None = None,
        size: int = 10,
        from_index: int = 0,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        """Jobs matching every given filter (an empty filter matches all), `removed` excluded.

        ``submitted_from`` (inclusive) and ``submitted_until`` (exclusive) bound the time of
        submission, in Unix seconds.
        """
        query = select(tables.jobs.c.id).where(tables.jobs.c.status != "removed")
        if collabs is not None:
            query = query.where(tables.jobs.c.collab.in_(list(collabs)))
        if user_ids is not None:
            query = query.where(tables.jobs.c.user_id.in_(list(user_ids)))
        if statuses := list(statuses):
            query = query.where(tables.jobs.c.status.in_(statuses))
        if platforms := list(platforms):
            query = query.where(tables.jobs.c.hardware_platform.in_(platforms))
        if submitted_from is not None:
            query = query.where(tables.jobs.c.timestamp_submission >= submitted_from)
        if submitted_until is not None:
            query = query.where(tables.jobs.c.timestamp_submission < submitted_until)
        if tag_list := list(tags):
            query = query.where(or_(*(_has_tag(tables.jobs.c.tags, t) for t in tag_list)))
        order = tables.jobs.c.id.desc() if newest_first else tables.jobs.c.id
        query = query.order_by(order).offset(from_index).limit(size)
        with self.engine.connect() as conn:
            ids = list(conn.execute(query).scalars())
        return [self.job(job_id) for job_id in ids]

    def remove(self, job_id: int) -> None:
        """Mark a job removed (hidden from lists; a running one is stopped by its runner)."""
        with self._writing() as conn:
            conn.execute(
                update(tables.jobs).where(tables.jobs.c.id == job_id).values(status="removed")
            )

    def add_comment(self, job_id: int, user: str, content: str) -> dict[str, Any]:
        """Attach a comment to a job; returns it."""
        with self._writing() as conn:
            comment_id = conn.execute(
                insert(tables.comments)
                .values(job_id=job_id, content=content, user_id=user, timestamp=self._clock())
                .returning(tables.comments.c.id)
            ).scalar_one()
            row = conn.execute(
                select(tables.comments).where(tables.comments.c.id == comment_id)
            ).one()
        return dict(row._mapping)

    def set_tags(self, job_id: int, tags: Sequence[str]) -> None:
        """Replace a job's tags."""
        with self._writing() as conn:
            conn.execute(
                update(tables.jobs)
                .where(tables.jobs.c.id == job_id)
                .values(tags=json.dumps(list(tags)))
            )

    # the runner's side ------------------------------------------------------------------------

    def claim(self, runner_id: str, platform: str) -> dict[str, Any] | None:
        """Take the oldest submitted job of `platform` (now `validated`), or None.

        A job whose collab has no quota left by now (jobs queued behind it used it up) ends
        as error, unrun, as the platform's quota manager refuses it when it would start.
        """
        with self._writing() as conn:
            candidates = (
                select(tables.jobs.c.id, tables.jobs.c.collab)
                .where(
                    tables.jobs.c.status == "submitted",
                    tables.jobs.c.hardware_platform == platform,
                )
                .order_by(tables.jobs.c.id)
                .limit(1)
            )
            if self.is_postgres:
                candidates = candidates.with_for_update(skip_locked=True)
            while True:
                candidate = conn.execute(candidates).first()
                if candidate is None:
                    return None
                job_id = candidate.id
                rows = _quota_rows(conn, candidate.collab, platform)
                if not rows or _has_room(rows):
                    break
                refusal = QuotaExhaustedError(candidate.collab, platform)
                conn.execute(
                    update(tables.jobs)
                    .where(tables.jobs.c.id == job_id)
                    .values(
                        status="error",
                        log=error_block(f"{refusal}: the job was not run"),
                        timestamp_completion=self._clock(),
                        resource_usage=0.0,
                        is_charged=True,
                    )
                )
            taken = conn.execute(
                update(tables.jobs)
                .where(tables.jobs.c.id == job_id, tables.jobs.c.status == "submitted")
                .values(status="validated", runner_id=runner_id, heartbeat_at=self._clock())
            ).rowcount
        return self.job(job_id) if taken else None

    def heartbeat(
        self, job_id: int, runner_id: str, *, status: str | None = None, log: str | None = None
    ) -> str:
        """Record that the runner still holds the job (with its log so far); returns its status.

        A status other than validated/running means the job was removed or given up as lost:
        the runner stops it.
        """
        values: dict[str, Any] = {"heartbeat_at": self._clock()}
        if log is not None:
            values["log"] = log
        if status is not None:
            values["status"] = status
        with self._writing() as conn:
            conn.execute(
                update(tables.jobs)
                .where(
                    tables.jobs.c.id == job_id,
                    tables.jobs.c.runner_id == runner_id,
                    tables.jobs.c.status.in_(ACTIVE_STATUSES),
                )
                .values(**values)
            )
            current: str = conn.execute(
                select(tables.jobs.c.status).where(tables.jobs.c.id == job_id)
            ).scalar_one()
        return current

    def finish(
        self,
        job_id: int,
        runner_id: str,
        *,
        status: str,
        log: str,
        outputs: Sequence[OutputFile],
        provenance: Mapping[str, Any],
        core_hours: float,
    ) -> None:
        """End a job as finished or error with its log, outputs and usage, charged once."""
        with self._writing() as conn:
            row = conn.execute(
                select(tables.jobs).where(tables.jobs.c.id == job_id).with_for_update()
            ).one()
            if row.runner_id != runner_id or row.status not in ACTIVE_STATUSES:
                # removed meanwhile, or given up as lost: keep the outputs but not the status
                # (nor, if lost, the reason it says)
                status = row.status
                if row.log.endswith(_LOST_BLOCK):
                    log += _LOST_BLOCK
            conn.execute(
                update(tables.jobs)
                .where(tables.jobs.c.id == job_id)
                .values(
                    status=status,
                    log=log,
                    provenance=json.dumps(dict(provenance)),
                    timestamp_completion=self._clock(),
                    resource_usage=core_hours,
                    is_charged=True,
                )
            )
            conn.execute(delete(tables.outputs).where(tables.outputs.c.job_id == job_id))
            if outputs:
                conn.execute(
                    insert(tables.outputs),
                    [
                        {
                            "job_id": job_id,
                            "path": o.path,
                            "size": o.size,
                            "hash": o.hash,
                            "content_type": o.content_type,
                        }
                        for o in outputs
                    ],
                )
            if not row.is_charged and core_hours > 0:
                self._charge(conn, row.collab, row.hardware_platform, core_hours)

    def _charge(self, conn: Connection, collab: str, platform: str, core_hours: float) -> None:
        """Add usage to the first accepted quota of the collab that has room (else the last)."""
        rows = conn.execute(
            select(tables.quotas.c.id, tables.quotas.c.limit, tables.quotas.c.usage)
            .join(tables.projects, tables.projects.c.id == tables.quotas.c.project_id)
            .where(
                tables.projects.c.collab == collab,
                tables.projects.c.status == "accepted",
                tables.quotas.c.platform == platform,
            )
            .order_by(tables.quotas.c.id)
        ).all()
        if not rows:
            return
        target = next((r for r in rows if r.usage < r.limit), rows[-1])
        conn.execute(
            update(tables.quotas)
            .where(tables.quotas.c.id == target.id)
            .values(usage=tables.quotas.c.usage + core_hours)
        )

    def active_runner_ids(self) -> list[str]:
        """The runners holding validated or running jobs."""
        with self.engine.connect() as conn:
            return [
                r
                for r in conn.execute(
                    select(tables.jobs.c.runner_id)
                    .where(tables.jobs.c.status.in_(ACTIVE_STATUSES))
                    .distinct()
                ).scalars()
                if r is not None
            ]

    def reap_lost(self, stale_s: float, *, runner_ids: Iterable[str] = ()) -> list[int]:
        """End as error every taken job whose runner stopped beating for `stale_s`.

        `runner_ids` names runners known to be gone (a restarted process's previous self),
        whose jobs end at once. Returns the ids of the jobs ended.
        """
        now = self._clock()
        condition = tables.jobs.c.heartbeat_at < now - stale_s
        if gone := list(runner_ids):
            condition = or_(condition, tables.jobs.c.runner_id.in_(gone))
        with self._writing() as conn:
            lost = list(
                conn.execute(
                    select(tables.jobs.c.id, tables.jobs.c.log).where(
                        tables.jobs.c.status.in_(ACTIVE_STATUSES), condition
                    )
                )
            )
            for job_id, log in lost:
                conn.execute(
                    update(tables.jobs)
                    .where(tables.jobs.c.id == job_id, tables.jobs.c.status.in_(ACTIVE_STATUSES))
                    .values(
                        status="error",
                        log=log + _LOST_BLOCK,
                        timestamp_completion=now,
                        # (not charged: a runner still running it charges it when it ends)
                    )
                )
        return [job_id for job_id, _ in lost]


def _quota_rows(conn: Connection, collab: str, platform: str) -> list[Any]:
    """The collab's quotas on the platform, with their projects' status."""
    return list(
        conn.execute(
            select(tables.quotas.c.limit, tables.quotas.c.usage, tables.projects.c.status)
            .join(tables.projects, tables.projects.c.id == tables.quotas.c.project_id)
            .where(tables.projects.c.collab == collab, tables.quotas.c.platform == platform)
        ).all()
    )


def _has_room(rows: Sequence[Any]) -> bool:
    """Whether an accepted project among the quota rows has some left."""
    return any(r.status == "accepted" and r.usage < r.limit for r in rows)


def error_block(reason: str) -> str:
    """The block appended to a failed job's log, as the SpiNNaker executor writes it."""
    return f"\n\n==================\nError:\n{reason}\n"


def _has_tag(column: Any, tag: str) -> Any:
    """Whether the JSON list of tags in `column` (as `json.dumps` writes it: `["a", "b"]`)
    holds `tag` itself: its JSON text between the list's own delimiters, never a run of
    characters across two tags."""
    text = json.dumps(tag)
    return or_(
        *(
            column.contains(before + text + after, autoescape=True)
            for before in ("[", ", ")
            for after in (",", "]")
        )
    )


_LOST_BLOCK = error_block("the runner running this job stopped (lost)")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
