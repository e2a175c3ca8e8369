"""The HTTP service: the job queue API v3 subset the `nmpi` client uses, `/userinfo`, the
published output files and the web job manager, as one FastAPI application.

The API sits at the root of the port (the client drops the path of `job_service` for jobs and
keeps it for projects, so `//projects/` arrives too and is treated as `/projects/`); trailing
slashes are optional. Errors are `{"detail": ...}` with the real service's statuses; a bug is
logged and answered "internal error" (never a traceback).
"""

from __future__ import annotations

import logging
import mimetypes
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import Field

from jobqueue.bodies import (
    MAX_ID,
    MAX_REQUEST_BYTES,
    SUPPORTED_PLATFORMS,
    SubmittedJob,
    TextBody,
    check_tags,
    unsupported_platform,
)
from jobqueue.errors import (
    AccessDeniedError,
    BadRequestError,
    JobQueueError,
    NoSuchJobError,
)
from jobqueue.store import Identity, JobStore
from jobqueue.views import comment_json, data_set, job_json, project_json

__all__ = ["SUPPORTED_PLATFORMS", "create_app"]

log = logging.getLogger("allotment.batch")

_STATUSES = ("submitted", "validated", "running", "mapped", "finished", "error", "removed")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class NewComment(TextBody):
    """The body of `POST /jobs/{id}/comments/`."""

    content: str = Field(min_length=1)


class NewProject(TextBody):
    """The body of `POST /projects/`."""

    collab: str
    title: str
    abstract: str
    description: str | None = None
    status: str = "in preparation"


class ProjectEdit(TextBody):
    """The body of `PUT /projects/{id}`."""

    status: str | None = None
    title: str | None = None
    abstract: str | None = None
    description: str | None = None


class _PathNormaliser:
    """Collapses `//` and drops a trailing `/`, so `//projects/` and `/jobs/` route as one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            while "//" in path:
                path = path.replace("//", "/")
            if len(path) > 1 and path.endswith("/"):
                path = path.rstrip("/") or "/"
            scope = dict(scope, path=path, raw_path=path.encode())
        await self.app(scope, receive, send)


class _Admission:
    """Refuses a request whose body is over `MAX_REQUEST_BYTES` with 413, before the
    application reads any of it (by its Content-Length, or by counting a chunked body), and
    one whose URL holds text the database cannot keep (a NUL, bytes that are not UTF-8)
    with 400, whatever it asks for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not _is_keepable_url(scope):
            detail = "the URL holds a NUL character or bytes that are not UTF-8 text"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
            await self._refuse(scope, receive, send)
            return
        messages = []
        n_bytes = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            n_bytes += len(message.get("body", b""))
            if n_bytes > MAX_REQUEST_BYTES:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Any:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Any, send: Any) -> None:
        detail = (
            f"the request is larger than {MAX_REQUEST_BYTES // (1024 * 1024)} MiB;"
            " send larger code as a URL (a git repository or an archive)"
        )
        response = JSONResponse({"detail": detail}, status_code=413)
        await response(scope, receive, send)


def _is_keepable_url(scope: Scope) -> bool:
    path: str = scope["path"]
    query = urllib.parse.unquote_to_bytes(scope.get("query_string", b""))
    try:
        query.decode("utf-8")
        path.encode("utf-8")
    except UnicodeError:
        return False
    return "\x00" not in path and b"\x00" not in query


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        cookie = request.cookies.get("allotment_token")
        if cookie:
            return cookie
        raise JobQueueErrorWith(403, "Not authenticated")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise JobQueueErrorWith(403, "Invalid authentication credentials")
    return token.strip()


class JobQueueErrorWith(JobQueueError):
    """An error answered with a given status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def identity(request: Request) -> Identity:
    """The caller, from the Bearer token (or the web pages' cookie)."""
    store: JobStore = request.app.state.store
    found = store.identity(_bearer(request))
    if found is None:
        raise JobQueueErrorWith(401, "Token may have expired")
    return found


Caller = Annotated[Identity, Depends(identity)]


def create_app(
    store: JobStore, jobs_dir: Path, *, on_submit: Callable[[], None] | None = None
) -> ASGIApp:
    """The ASGI application over `store` and the jobs' directories under `jobs_dir`.

    `on_submit` is called after each new job (to wake a runner in the same process).
    """
    app = FastAPI(title="allotment batch jobs", version="3", redirect_slashes=False)
    app.state.store = store
    from jobqueue import web

    def visible_job(job_id: int, caller: Identity) -> dict[str, Any]:
        if not 0 <= job_id <= MAX_ID:
            raise NoSuchJobError(job_id)
        job = store.job(job_id)
        if job["status"] == "removed" or not caller.can_access(job["collab"]):
            raise NoSuchJobError(job_id)
        return job

    @app.exception_handler(JobQueueError)
    async def _known(_request: Request, error: JobQueueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/")
    def about() -> dict[str, Any]:
        return {
            "about": "This is allotment's EBRAINS Neuromorphic Computing Job Queue API.",
            "version": "3",
            "status": "ok",
            "links": {"documentation": "/docs", "job manager": "/app"},
            "authentication": {
                "server": "/userinfo",
                "client-id": "allotment",
                "collaboratory": None,
            },
        }

    @app.get("/userinfo")
    def userinfo(request: Request) -> JSONResponse:
        try:
            token = _bearer(request)
        except JobQueueError:
            token = ""
        found = store.identity(token) if token else None
        if found is None:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "Token verification failed"},
                status_code=401,
            )
        collabs = [f"private-{found.user}", *found.collabs]
        return JSONResponse(
            {
                "sub": found.user,
                "preferred_username": found.user,
                "name": found.user,
                "given_name": found.user,
                "family_name": "",
                "roles": {"team": [f"collab-{c}-editor" for c in collabs]},
            }
        )

    # jobs ---------------------------------------------------------------------------------------

    @app.get("/jobs")
    def list_jobs(
        request: Request,
        caller: Caller,
        status: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI's own idiom
        tags: Annotated[list[str], Query()] = [],  # noqa: B006
        collab: Annotated[list[str], Query()] = [],  # noqa: B006
        user_id: Annotated[list[str], Query()] = [],  # noqa: B006
        hardware_platform: Annotated[list[str], Query()] = [],  # noqa: B006
        date_range_start: str | None = None,
        date_range_end: str | None = None,
        size: int = 10,
        from_index: int = 0,
    ) -> list[dict[str, Any]]:
        submitted_from = None if date_range_start is None else _day_start(date_range_start)
        submitted_until = None if date_range_end is None else _day_start(date_range_end) + 86_400
        for name in user_id:
            if name != caller.user:
                raise JobQueueErrorWith(403, "You do not have permission to view other users' jobs")
        for name in status:
            if name not in _STATUSES:
                raise BadRequestError(f"unknown job status {name!r}")
        for name in collab:
            if not caller.can_access(name):
                raise AccessDeniedError(name)
        found = store.jobs(
            collabs=collab or None,
            user_ids=user_id or (None if collab else [caller.user]),
            statuses=status,
            tags=tags,
            platforms=hardware_platform,
            submitted_from=submitted_from,
            submitted_until=submitted_until,
            size=max(0, min(size, 100_000)),
            from_index=max(0, min(from_index, MAX_ID)),
        )
        base = str(request.base_url)
        return [job_json(job, base) for job in found]

    @app.post("/jobs", status_code=201)
    def submit(request: Request, caller: Caller, body: SubmittedJob) -> dict[str, Any]:
        if not caller.can_access(body.collab):
            raise AccessDeniedError(body.collab)
        problem = unsupported_platform(body.hardware_platform)
        if problem is not None:
            raise BadRequestError(problem)
        job = store.submit(caller, body.model_dump())
        if on_submit is not None:
            on_submit()
        shown = job_json(job, str(request.base_url))
        accepted = [
            "code",
            "command",
            "collab",
            "input_data",
            "hardware_platform",
            "hardware_config",
            "tags",
            "id",
            "user_id",
            "status",
            "timestamp_submission",
            "resource_uri",
        ]
        return {key: shown[key] for key in accepted}

    @app.get("/jobs/{job_id}")
    def get_job(
        request: Request,
        caller: Caller,
        job_id: int,
        with_log: bool = False,
        with_comments: bool = False,
    ) -> dict[str, Any]:
        job = visible_job(job_id, caller)
        return job_json(job, str(request.base_url), with_log=with_log, with_comments=with_comments)

    @app.delete("/jobs/{job_id}")
    def remove_job(caller: Caller, job_id: int) -> None:
        job = visible_job(job_id, caller)
        if job["user_id"] != caller.user:
            raise JobQueueErrorWith(403, f"job {job_id} belongs to another user")
        store.remove(job_id)

    @app.get("/jobs/{job_id}/log")
    def job_log(caller: Caller, job_id: int) -> PlainTextResponse:
        return PlainTextResponse(visible_job(job_id, caller)["log"])

    @app.get("/jobs/{job_id}/output_data")
    def output_data(request: Request, caller: Caller, job_id: int) -> dict[str, Any] | None:
        return data_set(visible_job(job_id, caller), str(request.base_url))

    @app.put("/jobs/{job_id}/output_data")
    def copy_output_data(caller: Caller, job_id: int) -> None:
        visible_job(job_id, caller)
        raise BadRequestError(
            "not supported here: copying outputs to EBRAINS Drive or Bucket; download them"
        )

    @app.get("/jobs/{job_id}/comments")
    def comments(caller: Caller, job_id: int) -> list[dict[str, Any]]:
        return [comment_json(c) for c in visible_job(job_id, caller)["comments"]]

    @app.post("/jobs/{job_id}/comments", status_code=201)
    def add_comment(caller: Caller, job_id: int, body: NewComment) -> dict[str, Any]:
        visible_job(job_id, caller)
        return comment_json(store.add_comment(job_id, caller.user, body.content))

    @app.get("/jobs/{job_id}/tags")
    def job_tags(caller: Caller, job_id: int) -> list[str]:
        tags: list[str] = visible_job(job_id, caller)["tags"]
        return tags

    @app.post("/jobs/{job_id}/tags", status_code=201)
    def add_tags(caller: Caller, job_id: int, tags: Annotated[list[str], Body()]) -> list[str]:
        current: list[str] = visible_job(job_id, caller)["tags"]
        try:
            added = check_tags([t for t in tags if t.strip()])  # empty ones are skipped
        except ValueError as error:
            raise BadRequestError(str(error)) from None
        new = current + [t for t in dict.fromkeys(added) if t not in current]
        store.set_tags(job_id, new)
        return new

    @app.delete("/jobs/{job_id}/tags")
    def remove_tags(caller: Caller, job_id: int, tags: Annotated[list[str], Body()]) -> None:
        current: list[str] = visible_job(job_id, caller)["tags"]
        store.set_tags(job_id, [t for t in current if t not in {x.strip() for x in tags}])

    @app.get("/tags")
    def collab_tags(caller: Caller, collab: str) -> list[str]:
        if not caller.can_access(collab):
            raise AccessDeniedError(collab)
        seen: dict[str, None] = {}
        for job in store.jobs(collabs=[collab], size=100_000):
            seen.update(dict.fromkeys(job["tags"]))
        return list(seen)

    @app.get("/collabs")
    def collabs(caller: Caller) -> list[str]:
        return [f"private-{caller.user}", *caller.collabs]

    # projects and quotas ---------------------------------------------------------------------

    def visible_project(project_id: str, caller: Identity) -> dict[str, Any]:
        project = store.project(project_id)
        if project is None or not caller.can_access(project["collab"]):
            raise JobQueueErrorWith(404, f"project {project_id} does not exist")
        return project

    @app.get("/projects")
    def list_projects(
        caller: Caller, collab: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        if collab is not None and not caller.can_access(collab):
            raise AccessDeniedError(collab)
        found = store.projects(collab, status)
        return [project_json(p) for p in found if caller.can_access(p["collab"])]

    @app.post("/projects", status_code=201)
    def create_project(caller: Caller, body: NewProject) -> dict[str, Any]:
        if not caller.can_access(body.collab):
            raise AccessDeniedError(body.collab)
        if body.status not in ("in preparation", "under review"):
            raise BadRequestError(f"a new project cannot have status {body.status!r}")
        project_id = store.create_project(
            body.collab, caller.user, body.title, body.abstract, body.description, body.status
        )
        return project_json(visible_project(project_id, caller))

    @app.get("/projects/{project_id}")
    def get_project(caller: Caller, project_id: str) -> dict[str, Any]:
        return project_json(visible_project(project_id, caller))

    @app.put("/projects/{project_id}")
    def edit_project(caller: Caller, project_id: str, body: ProjectEdit) -> int:
        project = visible_project(project_id, caller)
        if project["status"] != "in preparation":
            raise JobQueueErrorWith(403, "a project that has been submitted cannot be edited")
        values = body.model_dump(exclude_none=True)
        if values.get("status") not in (None, "in preparation", "under review"):
            raise BadRequestError(f"a project cannot be given status {values['status']!r}")
        store.update_project(project_id, values)
        return 201

    @app.delete("/projects/{project_id}")
    def delete_project(caller: Caller, project_id: str) -> None:
        project = visible_project(project_id, caller)
        if project["status"] != "in preparation":
            raise JobQueueErrorWith(403, "a project that has been submitted cannot be deleted")
        store.delete_project(project_id)

    @app.get("/projects/{project_id}/quotas")
    def project_quotas(caller: Caller, project_id: str) -> list[dict[str, Any]]:
        quotas: list[dict[str, Any]] = project_json(visible_project(project_id, caller))["quotas"]
        return quotas

    @app.get("/projects/{project_id}/quotas/{quota_id}")
    def project_quota(caller: Caller, project_id: str, quota_id: int) -> dict[str, Any]:
        for quota in project_quotas(caller, project_id):
            if quota["resource_uri"].endswith(f"/quotas/{quota_id}"):
                return quota
        raise JobQueueErrorWith(404, f"quota {quota_id} does not exist")

    # published outputs (no auth: the path is the secret, as on the real service) -----------

    @app.get("/outputs/{output_key}/{path:path}")
    def output_file(output_key: str, path: str) -> Response:
        job = store.job_by_output_key(output_key)
        if job is None or not any(o.path == path for o in job["outputs"]):
            return JSONResponse({"detail": "no such output file"}, status_code=404)
        root = jobs_dir / str(job["id"])
        file = root / path
        if not file.is_file() or file.is_symlink():
            return JSONResponse({"detail": "the output file is gone"}, status_code=404)
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers = {
            # Served on the service's own origin: a job's HTML or SVG must never run there.
            "Content-Security-Policy": "sandbox",
            "X-Content-Type-Options": "nosniff",
        }
        if not media.startswith("image/") or media == "image/svg+xml":
            headers["Content-Disposition"] = "attachment"
        return FileResponse(file, media_type=media, headers=headers)

    web.add_routes(app, store, identity, visible_job, on_submit)
    return _Admission(_PathNormaliser(app))


def _day_start(text: str) -> float:
    """Unix time of the start (UTC) of the day an ISO date (or date and time) names.

    Raises:
        BadRequestError: the text is not an ISO date.
    """
    try:
        day = datetime.fromisoformat(text).date()
    except ValueError:
        raise BadRequestError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp()
