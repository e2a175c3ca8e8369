"""The web job manager: server-rendered pages over the same store, as the portal shows jobs.

    /app              the job list (ID, status, system, code, submitted on, submitted by)
    /app/jobs/{id}    a job: its code, its log (refreshed while it runs), its output files,
                      figures shown inline
    /app/submit       a form with an editor for a script
    /app/login        paste a token; it is kept in a same-site cookie

The pages are plain HTML with a few lines of script that poll the JSON API for the live log.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from jobqueue.bodies import SubmittedJob, unsupported_platform
from jobqueue.errors import JobQueueError
from jobqueue.store import Identity, JobStore
from jobqueue.views import data_set

__all__ = ["add_routes"]

_STYLE = """
body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
pre{background:#f4f4f4;padding:1em;overflow:auto;max-height:40em}
.status{font-weight:bold}.error{color:#b00}.finished{color:#070}
textarea{width:100%;font-family:monospace}
nav a{margin-right:1em}img{max-width:48em;display:block;margin:1em 0}
"""

_COOKIE = "allotment_token"


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        status_code=status_code,
        content="<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        "<nav><a href='/app'>Jobs</a><a href='/app/submit' id='new-job'>New job</a>"
        "<a href='/app/login'>Token</a></nav>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>",
    )


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y/%m/%d %H:%M:%S")


def _summary(code: str, n_chars: int = 60) -> str:
    flat = " ".join(code.split())
    return flat if len(flat) <= n_chars else flat[: n_chars - 3] + "..."


_LOG_SCRIPT = """
<script>
const jobId = %d;
async function refresh() {
  const answer = await fetch('/jobs/' + jobId + '?with_log=true', {credentials: 'same-origin'});
  if (!answer.ok) { return; }
  const job = await answer.json();
  document.getElementById('status').textContent = job.status;
  document.getElementById('status').className = 'status ' + job.status;
  document.getElementById('log').textContent = job.log || '';
  if (job.status === 'finished' || job.status === 'error') { location.reload(); return; }
  setTimeout(refresh, 1000);
}
setTimeout(refresh, 1000);
</script>
"""


def add_routes(
    app: FastAPI,
    store: JobStore,
    identity: Callable[[Request], Identity],
    visible_job: Callable[[int, Identity], dict[str, Any]],
    on_submit: Callable[[], None] | None,
) -> None:
    """Add the pages to `app`; `identity` and `visible_job` are the API's own access rules."""

    def caller_or_none(request: Request) -> Identity | None:
        try:
            return identity(request)
        except JobQueueError:
            return None

    def login_redirect() -> Response:
        return RedirectResponse("/app/login", status_code=303)

    def sign_in_page(problem: str = "") -> HTMLResponse:
        shown = f"<p class='error'>{html.escape(problem)}</p>" if problem else ""
        return _page(
            "Sign in",
            f"{shown}<form method='post' action='/app/login'><p>Token (from <code>allotment"
            " token create</code>):</p><input name='token' id='token' size='60'>"
            " <button type='submit' id='sign-in'>Sign in</button></form>",
        )

    @app.get("/app/login")
    def login_form() -> HTMLResponse:
        return sign_in_page()

    @app.post("/app/login")
    async def login(request: Request) -> Response:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = fields.get("token", [""])[0].strip()
        if not token or await run_in_threadpool(store.identity, token) is None:
            return sign_in_page("That token is not valid.")
        answer = RedirectResponse("/app", status_code=303)
        answer.set_cookie(_COOKIE, token, httponly=True, samesite="strict")
        return answer

    @app.get("/app")
    def job_list(request: Request) -> Response:
        caller = caller_or_none(request)
        if caller is None:
            return login_redirect()
        jobs = store.jobs(collabs=[f"private-{caller.user}", *caller.collabs], size=200)
        rows = "".join(
            f"<tr id='job-{j['id']}'><td><a href='/app/jobs/{j['id']}'>{j['id']}</a></td>"
            f"<td class='status {j['status']}'>{j['status']}"
            + (f" (#{j['queue_position']} in queue)" if j["queue_position"] else "")
            + f"</td><td>{html.escape(j['hardware_platform'])}</td>"
            f"<td><code>{html.escape(_summary(j['code']))}</code></td>"
            f"<td>{_when(j['timestamp_submission'])}</td><td>{html.escape(j['user_id'])}</td></tr>"
            for j in jobs
        )
        return _page(
            f"Jobs of {caller.user}",
            "<table id='jobs'><tr><th>ID</th><th>Status</th><th>System</th><th>Code</th>"
            f"<th>Submitted on</th><th>Submitted by</th></tr>{rows}</table>",
        )

    @app.get("/app/jobs/{job_id}")
    def job_page(request: Request, job_id: int) -> Response:
        caller = caller_or_none(request)
        if caller is None:
            return login_redirect()
        try:
            job = visible_job(job_id, caller)
        except JobQueueError as error:
            message = f"<p class='error'>{html.escape(str(error))}</p>"
            return _page(f"Job {job_id}", message, status_code=error.status)
        outputs = data_set(job, str(request.base_url)) or {"files": []}
        items = []
        for item in outputs["files"]:
            url = html.escape(item["url"])
            name = html.escape(item["path"].split("/", 2)[-1])
            figure = (
                f"<img src='{url}' alt='{name}'>"
                if (item["content_type"] or "").startswith("image/")
                else ""
            )
            items.append(f"<li><a href='{url}'>{name}</a> ({item['size']} bytes){figure}</li>")
        live = "" if job["status"] in ("finished", "error") else _LOG_SCRIPT % job_id
        position = (
            f"<p id='queue'>Position in queue: {job['queue_position']}</p>"
            if job["queue_position"]
            else ""
        )
        config = json.dumps(job["hardware_config"]) if job["hardware_config"] else ""
        return _page(
            f"Job {job_id}",
            f"<p><span id='status' class='status {job['status']}'>{job['status']}</span></p>"
            f"{position}<p>Submitted on {_when(job['timestamp_submission'])} by"
            f" {html.escape(job['user_id'])} to {html.escape(job['hardware_platform'])}"
            f" in collab {html.escape(job['collab'])}</p>"
            + (
                f"<p>Completed on {_when(job['timestamp_completion'])}</p>"
                if job["timestamp_completion"]
                else ""
            )
            + (f"<p>Hardware config: <code>{html.escape(config)}</code></p>" if config else "")
            + "<h2>Output files</h2><ul id='outputs'>"
            + "".join(items)
            + "</ul><h2>Code</h2>"
            f"<pre id='code'>{html.escape(job['code'])}</pre><h2>Log</h2>"
            f"<pre id='log'>{html.escape(job['log'])}</pre>{live}",
        )

    @app.get("/app/submit")
    def submit_form(request: Request) -> Response:
        caller = caller_or_none(request)
        if caller is None:
            return login_redirect()
        options = "".join(
            f"<option>{html.escape(c)}</option>"
            for c in [*caller.collabs, f"private-{caller.user}"]
        )
        return _page(
            "New job",
            "<form method='post' action='/app/submit'>"
            f"<p>Collab <select name='collab' id='collab'>{options}</select>"
            " Hardware platform <select name='hardware_platform'><option>SpiNNaker</option>"
            "</select></p><p>Code (a script, or the URL of a git repository or archive):</p>"
            "<textarea name='code' id='editor' rows='24' spellcheck='false'>"
            "import spynnaker8 as sim\n</textarea>"
            "<p>Command (for a repository or archive) <input name='command' id='command'"
            " size='40' placeholder='run.py {system}'></p>"
            "<p>Hardware configuration (JSON) <input name='hardware_config' id='config'"
            " size='40' placeholder='{\"timeout\": 1}'></p>"
            "<p>Tags (comma-separated) <input name='tags' id='tags' size='40'></p>"
            "<button type='submit' id='submit'>Submit</button></form>",
        )

    @app.post("/app/submit")
    async def submit(request: Request) -> Response:
        caller = await run_in_threadpool(caller_or_none, request)
        if caller is None:
            return login_redirect()
        body = (await request.body()).decode("utf-8", "replace")
        fields = {k: v[0] for k, v in parse_qs(body).items()}
        values: dict[str, Any] = {
            "code": fields.get("code", ""),
            "collab": fields.get("collab", f"private-{caller.user}"),
            "hardware_platform": fields.get("hardware_platform", "SpiNNaker"),
            "command": fields.get("command") or None,
            "tags": [t.strip() for t in fields.get("tags", "").split(",") if t.strip()],
        }
        problem = None
        if fields.get("hardware_config", "").strip():
            try:
                values["hardware_config"] = json.loads(fields["hardware_config"])
                if not isinstance(values["hardware_config"], dict):
                    problem = "the hardware configuration must be a JSON object"
            except json.JSONDecodeError as error:
                problem = f"the hardware configuration is not JSON: {error}"
        if not values["code"].strip():
            problem = "there is no code to run"
        elif not caller.can_access(values["collab"]):
            problem = f"you are not a member of collab {values['collab']!r}"
        elif (refused := unsupported_platform(values["hardware_platform"])) is not None:
            problem = refused
        if problem is None:
            try:  # the API's own checks of a submission (tags, text, timeout)
                values = SubmittedJob.model_validate(values).model_dump()
            except ValidationError as error:
                problem = "; ".join(
                    str(e["msg"]).removeprefix("Value error, ") for e in error.errors()
                )
        if problem is None:
            try:
                job = await run_in_threadpool(store.submit, caller, values)
            except JobQueueError as error:
                problem = str(error)
        if problem is not None:
            return _page("New job", f"<p class='error'>{html.escape(problem)}</p>")
        if on_submit is not None:
            on_submit()
        return RedirectResponse(f"/app/jobs/{job['id']}", status_code=303)
