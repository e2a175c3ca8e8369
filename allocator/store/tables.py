"""The database schema: SQLAlchemy Core tables and the schema version they make up.

Rows never leave `allocator.store`; the repository turns them into `JobRecord`s and the
other frozen records of `allocator.store.changes`. Bump `SCHEMA_VERSION` with every change
to these tables; a server refuses a database whose version is newer than its own.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

__all__ = [
    "SCHEMA_VERSION",
    "audit",
    "board_claims",
    "board_status",
    "jobs",
    "link_status",
    "machine_status",
    "meta",
    "metadata",
]

SCHEMA_VERSION = 2
"""The version of the schema below, kept in `meta` under the key "schema_version".

Version 2 added `machine_status`; a version 1 database is upgraded when opened.
"""

metadata = MetaData()

meta = Table(
    "allotment_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
"""Small named values: schema_version, next_job_id, commit_seq, lease."""

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", BigInteger, primary_key=True, autoincrement=False),
    Column("owner", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("keepalive_s", Double, nullable=True),
    Column("args", JSON, nullable=False),
    Column("kwargs", JSON, nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("power", Boolean, nullable=True),
    Column("machine_name", Text, nullable=True),
    Column("boards", JSON, nullable=False),
    Column("width_chips", Integer, nullable=True),
    Column("height_chips", Integer, nullable=True),
    Column("reason", Text, nullable=True),
    Column("destroyed_at", Double, nullable=True),
    Column("keepalivehost", Text, nullable=True),
)
"""Every live job and the retired ones not yet forgotten, one row each."""

board_claims = Table(
    "board_claims",
    metadata,
    Column("machine", String(200), nullable=False),
    Column("x", Integer, nullable=False),
    Column("y", Integer, nullable=False),
    Column("z", Integer, nullable=False),
    Column("job_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("machine", "x", "y", "z", name="board_claims_pk"),
)
"""Which job holds each board; the primary key makes a double allocation impossible."""

board_status = Table(
    "board_status",
    metadata,
    Column("machine", String(200), nullable=False),
    Column("x", Integer, nullable=False),
    Column("y", Integer, nullable=False),
    Column("z", Integer, nullable=False),
    Column("in_service", Boolean, nullable=False),
    Column("reason", Text, nullable=True),
    Column("changed_at", Double, nullable=False),
    Column("changed_by", Text, nullable=False),
    PrimaryKeyConstraint("machine", "x", "y", "z", name="board_status_pk"),
)
"""The operator's service state of each board that was ever changed."""

link_status = Table(
    "link_status",
    metadata,
    Column("machine", String(200), nullable=False),
    Column("x", Integer, nullable=False),
    Column("y", Integer, nullable=False),
    Column("z", Integer, nullable=False),
    Column("link", SmallInteger, nullable=False),
    Column("in_service", Boolean, nullable=False),
    Column("reason", Text, nullable=True),
    Column("changed_at", Double, nullable=False),
    Column("changed_by", Text, nullable=False),
    PrimaryKeyConstraint("machine", "x", "y", "z", "link", name="link_status_pk"),
)
"""The operator's service state of each board link that was ever changed."""

machine_status = Table(
    "machine_status",
    metadata,
    Column("machine", String(200), primary_key=True),
    Column("is_draining", Boolean, nullable=False),
    Column("reason", Text, nullable=True),
    Column("changed_at", Double, nullable=False),
    Column("changed_by", Text, nullable=False),
)
"""The operator's state of each machine that was ever drained (or undrained)."""

audit = Table(
    "audit",
    metadata,
    Column(
        "id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("at", Double, nullable=False),
    Column("who", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("detail", JSON, nullable=False),
)
"""Every administrative action, oldest first."""
