"""The changes the service stages, the state it loads back, and the store's errors.

Plain frozen records, no SQL: the service builds these; only the repository turns them into
rows. Board and link records name boards with `BoardXYZ` and links with `Link`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from allocator.errors import StoreError
from allocator.jobs import JobRecord
from machine_models.geometry import BoardXYZ, Link

__all__ = [
    "AppendAudit",
    "AuditEntry",
    "BoardClaim",
    "BoardStatus",
    "Change",
    "ClaimBoards",
    "DatabaseUnavailableError",
    "ForgetJobs",
    "LeaseHeldError",
    "LinkStatus",
    "PutBoardStatus",
    "PutJob",
    "PutLinkStatus",
    "ReleaseBoards",
    "SchemaVersionError",
    "SetNextJobId",
    "StoreConflictError",
    "StoreStats",
    "StoredState",
]


class DatabaseUnavailableError(StoreError):
    """The database failed and the store gave up: nothing more is committed.

    Every request from then on is refused with the short message below, never with the
    driver's text (it holds SQL and other users' parameters): `detail` is for the log. The
    server exits so that its supervisor restarts it from the durable state; a client should
    try again once it is back.
    """

    MESSAGE = "database unavailable, try again"

    def __init__(self, database: str, detail: str) -> None:
        super().__init__(self.MESSAGE)
        self.database = database
        self.detail = detail


class LeaseHeldError(StoreError):
    """Another server writes to this database; stop it first or use another database."""

    def __init__(self, database: str, holder: str | None = None) -> None:
        self.database = database
        detail = f" ({holder})" if holder else ""
        super().__init__(f"database {database} is in use by another allotment server{detail}")


class SchemaVersionError(StoreError):
    """The database was written by a different version of allotment; use a matching one."""

    def __init__(self, database: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        newer = "newer than" if found > supported else "different from"
        super().__init__(
            f"database {database} has schema version {found}, {newer} version {supported} "
            "that this server supports"
        )


class StoreConflictError(StoreError):
    """The database refused a transaction (a double claim or a duplicate row).

    This is a bug upstream: the in-memory state allowed a change the database forbids. The
    changes of that transaction were dropped.
    """

    def __init__(self, n_changes: int, detail: str) -> None:
        self.n_changes = n_changes
        super().__init__(f"database refused a commit of {n_changes} changes: {detail}")


@dataclass(frozen=True, slots=True)
class BoardStatus:
    """The service state of one board, as an operator last set it."""

    machine: str
    board: BoardXYZ
    in_service: bool
    reason: str | None
    changed_at: float
    changed_by: str


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The service state of one board link, as an operator last set it."""

    machine: str
    board: BoardXYZ
    link: Link
    in_service: bool
    reason: str | None
    changed_at: float
    changed_by: str


@dataclass(frozen=True, slots=True)
class MachineStatus:
    """Whether an operator drained a machine (it allocates nothing new while drained)."""

    machine: str
    is_draining: bool
    reason: str | None
    changed_at: float
    changed_by: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One administrative action; `audit_id` is assigned by the database (None until then)."""

    at: float
    who: str
    action: str
    target: str
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)
    audit_id: int | None = None


@dataclass(frozen=True, slots=True)
class BoardClaim:
    """The boards of one machine that one job holds in the database (sorted)."""

    machine: str
    job_id: int
    boards: tuple[BoardXYZ, ...]


@dataclass(frozen=True, slots=True)
class PutJob:
    """Insert or replace the whole record of a job."""

    record: JobRecord


@dataclass(frozen=True, slots=True)
class ClaimBoards:
    """Give boards to a job; fails the transaction if any of them is already claimed."""

    machine: str
    boards: tuple[BoardXYZ, ...]
    job_id: int


@dataclass(frozen=True, slots=True)
class ReleaseBoards:
    """Free boards, whoever holds them (no error for boards nobody holds)."""

    machine: str
    boards: tuple[BoardXYZ, ...]


@dataclass(frozen=True, slots=True)
class ForgetJobs:
    """Delete the records of jobs (retired jobs past the retention limit)."""

    job_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SetNextJobId:
    """Record the id the next created job will get."""

    next_job_id: int


@dataclass(frozen=True, slots=True)
class PutBoardStatus:
    """Insert or replace the service state of a board."""

    status: BoardStatus


@dataclass(frozen=True, slots=True)
class PutLinkStatus:
    """Insert or replace the service state of a board link."""

    status: LinkStatus


@dataclass(frozen=True, slots=True)
class PutMachineStatus:
    """Insert or replace the drained state of a machine."""

    status: MachineStatus


@dataclass(frozen=True, slots=True)
class AppendAudit:
    """Append an entry to the audit log."""

    entry: AuditEntry


Change = (
    PutJob
    | ClaimBoards
    | ReleaseBoards
    | ForgetJobs
    | SetNextJobId
    | PutBoardStatus
    | PutLinkStatus
    | PutMachineStatus
    | AppendAudit
)
"""Anything `Store.stage` accepts."""


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything persisted, as `Store.load` returns it.

    Attributes:
        jobs: live and retired jobs, by job id.
        claims: board claims grouped by (machine, job), sorted.
        next_job_id: the id the next job gets (at least one more than any stored job).
        board_status: every board whose service state was ever changed.
        link_status: every link whose service state was ever changed.
        audit: the newest audit entries, oldest first.
        machine_status: every machine whose drained state was ever changed.
    """

    jobs: tuple[JobRecord, ...] = ()
    claims: tuple[BoardClaim, ...] = ()
    next_job_id: int = 1
    board_status: tuple[BoardStatus, ...] = ()
    link_status: tuple[LinkStatus, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    machine_status: tuple[MachineStatus, ...] = ()

    @property
    def live_jobs(self) -> tuple[JobRecord, ...]:
        """The jobs that are not destroyed."""
        return tuple(record for record in self.jobs if record.is_live)

    @property
    def retired_jobs(self) -> tuple[JobRecord, ...]:
        """The destroyed jobs still remembered."""
        return tuple(record for record in self.jobs if not record.is_live)


@dataclass(slots=True)
class StoreStats:
    """Counters of the store's commits, for metrics and benchmarks.

    Attributes:
        n_commits: transactions committed.
        n_changes: changes committed.
        n_retries: failed attempts that were retried.
        n_conflicts: transactions the database refused (each one a bug upstream).
        commit_s_total: seconds spent in committed transactions.
        last_commit_s: seconds the last committed transaction took.
    """

    n_commits: int = 0
    n_changes: int = 0
    n_retries: int = 0
    n_conflicts: int = 0
    commit_s_total: float = 0.0
    last_commit_s: float = 0.0
