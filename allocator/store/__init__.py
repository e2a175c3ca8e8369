"""Durable state in SQL (SQLite by default, PostgreSQL for larger sites).

The only package that imports SQLAlchemy. The service stages frozen changes and flushes;
`Store.load` gives back a `StoredState` after a restart.
"""

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
from allocator.store.database import Database
from allocator.store.repository import Store

__all__ = [
    "AppendAudit",
    "AuditEntry",
    "BoardClaim",
    "BoardStatus",
    "Change",
    "ClaimBoards",
    "Database",
    "DatabaseUnavailableError",
    "ForgetJobs",
    "LeaseHeldError",
    "LinkStatus",
    "MachineStatus",
    "PutBoardStatus",
    "PutJob",
    "PutLinkStatus",
    "PutMachineStatus",
    "ReleaseBoards",
    "SchemaVersionError",
    "SetNextJobId",
    "Store",
    "StoreConflictError",
    "StoreStats",
    "StoredState",
]
