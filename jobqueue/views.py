"""The JSON shapes of the job queue API v3, built from the store's rows.

Every field of a job is present, null when unset, as FastAPI emits the real models; times are
ISO 8601 UTC with `Z`; `resource_uri`s are root-relative paths (the client joins them to the
host). `queue_position` is allotment's own addition (1 = next to run; null once taken).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from jobqueue.store import units_of

__all__ = ["REPOSITORY", "comment_json", "data_set", "iso", "job_json", "project_json"]

REPOSITORY = "allotment temporary storage"


def iso(timestamp: float | None) -> str | None:
    """Unix seconds as the real service writes them: `2025-01-02T03:04:05.678901Z`."""
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def data_set(job: dict[str, Any], base_url: str) -> dict[str, Any] | None:
    """The job's outputs; an empty list once it has ended (the client needs an object)."""
    if not job["outputs"] and job["status"] not in ("finished", "error"):
        return None
    prefix = f"{base_url.rstrip('/')}/outputs/{job['output_key']}"
    return {
        "repository": REPOSITORY,
        "files": [
            {
                "url": f"{prefix}/{quote(o.path)}",
                "path": f"{job['collab']}/{job['id']}/{o.path}",
                "content_type": o.content_type,
                "size": o.size,
                "hash": o.hash,
            }
            for o in job["outputs"]
        ],
    }


def comment_json(comment: dict[str, Any]) -> dict[str, Any]:
    """A comment as the API shows it."""
    return {
        "id": comment["id"],
        "job_id": comment["job_id"],
        "content": comment["content"],
        "user_id": comment["user_id"],
        "timestamp": iso(comment["timestamp"]),
        "resource_uri": f"/jobs/{comment['job_id']}/comments/{comment['id']}",
    }


def job_json(
    job: dict[str, Any], base_url: str, *, with_log: bool = False, with_comments: bool = False
) -> dict[str, Any]:
    """A job with every field of the v3 `Job` model."""
    usage = job["resource_usage"]
    return {
        "code": job["code"],
        "command": job["command"],
        "collab": job["collab"],
        "input_data": job["input_data"],
        "hardware_platform": job["hardware_platform"],
        "hardware_config": job["hardware_config"],
        "tags": job["tags"],
        "id": job["id"],
        "user_id": job["user_id"],
        "status": job["status"],
        "timestamp_submission": iso(job["timestamp_submission"]),
        "resource_uri": f"/jobs/{job['id']}",
        "output_data": data_set(job, base_url),
        "provenance": job["provenance"],
        "timestamp_completion": iso(job["timestamp_completion"]),
        "resource_usage": (
            None if usage is None else {"value": usage, "units": units_of(job["hardware_platform"])}
        ),
        "comments": (
            [comment_json(c) for c in job["comments"]]
            if with_comments and job["comments"]
            else None
        ),
        "log": job["log"] if with_log and job["log"] else None,
        "queue_position": job["queue_position"],
    }


def project_json(project: dict[str, Any]) -> dict[str, Any]:
    """A project (resource request) with its quotas."""
    uri = f"/projects/{project['id']}"
    return {
        "collab": project["collab"],
        "title": project["title"],
        "abstract": project["abstract"],
        "description": project["description"],
        "status": project["status"],
        "id": project["id"],
        "owner": project["owner"],
        "submission_date": iso(project["submission_date"]),
        "decision_date": iso(project["decision_date"]),
        "resource_uri": uri,
        "quotas": [
            {
                "limit": q["limit"],
                "platform": q["platform"],
                "units": q["units"],
                "usage": q["usage"],
                "project": uri,
                "resource_uri": f"{uri}/quotas/{q['id']}",
            }
            for q in project["quotas"]
        ],
    }
