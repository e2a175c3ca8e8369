"""The batch service's SQLAlchemy Core tables: the single source of its schema.

They live in the allocation server's database (its own tables are not touched) under names
prefixed `nmpi_`. JSON-valued columns hold JSON text; times are Unix seconds.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["comments", "jobs", "metadata", "outputs", "projects", "quotas", "tokens"]

metadata = MetaData()

tokens = Table(
    "nmpi_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 hex; the token is never stored
    Column("user_id", String(200), nullable=False),
    Column("collabs", Text, nullable=False),  # JSON list of collab names
    Column("created_at", Float, nullable=False),
    Column("is_revoked", Boolean, nullable=False, default=False),
)

jobs = Table(
    "nmpi_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", Text, nullable=False),
    Column("command", Text, nullable=True),
    Column("collab", String(200), nullable=False),
    Column("hardware_platform", String(100), nullable=False),
    Column("hardware_config", Text, nullable=True),
    Column("tags", Text, nullable=False, default="[]"),
    Column("input_data", Text, nullable=True),
    Column("user_id", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("timestamp_submission", Float, nullable=False),
    Column("timestamp_completion", Float, nullable=True),
    Column("log", Text, nullable=False, default=""),
    Column("provenance", Text, nullable=True),
    Column("resource_usage", Float, nullable=True),
    Column("output_key", String(64), nullable=False),  # the unguessable part of output URLs
    Column("runner_id", String(100), nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("is_charged", Boolean, nullable=False, default=False),
)
Index("nmpi_jobs_status", jobs.c.status, jobs.c.id)
Index("nmpi_jobs_collab", jobs.c.collab, jobs.c.id)

outputs = Table(
    "nmpi_outputs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("nmpi_jobs.id"), nullable=False, index=True),
    Column("path", Text, nullable=False),  # relative to the job's directory
    Column("size", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("content_type", String(100), nullable=False),
)

comments = Table(
    "nmpi_comments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("nmpi_jobs.id"), nullable=False, index=True),
    Column("content", Text, nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("timestamp", Float, nullable=False),
)

projects = Table(
    "nmpi_projects",
    metadata,
    Column("id", String(36), primary_key=True),  # a UUID, as the real service names projects
    Column("collab", String(200), nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("abstract", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("owner", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("submission_date", Float, nullable=True),
    Column("decision_date", Float, nullable=True),
)

quotas = Table(
    "nmpi_quotas",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(36), ForeignKey("nmpi_projects.id"), nullable=False, index=True),
    Column("platform", String(100), nullable=False),
    Column("units", String(20), nullable=False),
    Column("limit", Float, nullable=False),
    Column("usage", Float, nullable=False, default=0.0),
)
