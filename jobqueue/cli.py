"""The batch commands of `allotment`: tokens for operators; submit, jobs, log, fetch for users;
`python -m jobqueue serve|runner` for the processes `allotment serve` starts.

The user commands talk to the batch service over HTTP (`--url`, default
`$ALLOTMENT_BATCH_URL` or http://127.0.0.1:22280) with a token (`--token` or
`$ALLOTMENT_TOKEN`).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobqueue.bodies import MAX_REQUEST_BYTES
from jobqueue.errors import JobQueueError
from jobqueue.runner import RunnerConfig

__all__ = [
    "DEFAULT_BATCH_PORT",
    "DEFAULT_DB_URL",
    "add_runner_options",
    "add_subparsers",
    "main",
    "runner_config",
]

DEFAULT_BATCH_PORT = 22280
DEFAULT_DB_URL = "sqlite:///allotment.db"
_FINAL = ("finished", "error")


def add_runner_options(parser: argparse._ActionsContainer) -> None:
    """The options of a runner (shared by `serve` and `runner`)."""
    parser.add_argument(
        "--jobs-dir",
        type=Path,
        default=Path("allotment-jobs"),
        help="where the jobs' working directories and outputs live (default %(default)s)",
    )
    parser.add_argument(
        "--runners", type=int, default=2, help="jobs run at once (default %(default)s)"
    )
    parser.add_argument(
        "--job-timeout-h",
        type=float,
        default=24.0,
        help="wall-time limit of a job without hardware_config timeout (default %(default)s h)",
    )
    parser.add_argument(
        "--job-memory-mb", type=int, default=8192, help="address space limit per process"
    )
    parser.add_argument(
        "--job-output-mb", type=int, default=1024, help="limit on what one job writes"
    )
    parser.add_argument(
        "--standby-jobs",
        type=int,
        default=1,
        help="powered allocations kept ready for starting jobs, 0 for none (default %(default)s)",
    )
    parser.add_argument(
        "--standby-boards",
        type=int,
        default=1,
        help="boards of each standby allocation (default %(default)s)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="do not compile the PyNN backend's kernels at start (each job then compiles them,"
        " unless the shared cache of this code is warm already)",
    )
    parser.add_argument(
        "--kernel-cache",
        type=Path,
        default=None,
        help="the directory of the shared kernel caches (default $ALLOTMENT_KERNEL_CACHE, else"
        " $XDG_CACHE_HOME/allotment/kernels)",
    )


def runner_config(
    args: argparse.Namespace, spalloc_host: str | None, spalloc_port: int
) -> RunnerConfig:
    """The RunnerConfig from options added by `add_runner_options`."""
    if args.runners < 0:
        raise SystemExit("allotment: error: --runners must be 0 or more")
    if args.standby_jobs < 0:
        raise SystemExit("allotment: error: --standby-jobs must be 0 or more")
    if args.standby_boards < 1:
        raise SystemExit("allotment: error: --standby-boards must be 1 or more")
    timeout_h: float = args.job_timeout_h
    return RunnerConfig(
        jobs_dir=args.jobs_dir,
        n_slots=args.runners,
        default_timeout_h=timeout_h,
        cpu_s=max(1, int(timeout_h * 3600)),
        memory_bytes=args.job_memory_mb * 1024 * 1024,
        output_bytes=args.job_output_mb * 1024 * 1024,
        spalloc_host=spalloc_host,
        spalloc_port=spalloc_port,
        is_warming_up=not args.no_warmup,
        kernel_cache_dir=args.kernel_cache,
        standby_jobs=args.standby_jobs,
        standby_boards=args.standby_boards,
    )


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=os.environ.get("ALLOTMENT_DB", DEFAULT_DB_URL),
        help="the database `allotment serve` uses (default %(default)s)",
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ALLOTMENT_BATCH_URL", f"http://127.0.0.1:{DEFAULT_BATCH_PORT}"),
        help="the batch service (default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("ALLOTMENT_TOKEN"), help="default $ALLOTMENT_TOKEN"
    )


def add_subparsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add token, submit, jobs, log and fetch to the `allotment` command."""
    token = subparsers.add_parser("token", help="mint or revoke batch-service tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="mint a token; prints it alone")
    create.add_argument("--user", required=True)
    create.add_argument(
        "--collab", action="append", default=[], help="a collab the user edits (repeatable)"
    )
    _db_option(create)
    create.set_defaults(handler=_token_create)
    revoke = token_commands.add_parser("revoke", help="revoke a token")
    revoke.add_argument("token")
    _db_option(revoke)
    revoke.set_defaults(handler=_token_revoke)

    submit = subparsers.add_parser(
        "submit", help="submit a batch job: a script, a directory or an archive"
    )
    submit.add_argument("source", help="a .py file, a directory, a .zip/.tar.gz, or a URL")
    submit.add_argument("--command", default=None, help='default "run.py {system}"')
    submit.add_argument("--collab", default=None, help="default private-<user>")
    submit.add_argument("--config", default=None, help="hardware_config as JSON")
    submit.add_argument("--tag", action="append", default=[])
    submit.add_argument("--no-wait", action="store_true", help="print the id and return")
    _client_options(submit)
    submit.set_defaults(handler=_submit)

    jobs = subparsers.add_parser("jobs", help="list your batch jobs")
    jobs.add_argument("--collab", default=None)
    jobs.add_argument("--limit", type=int, default=20)
    _client_options(jobs)
    jobs.set_defaults(handler=_jobs)

    log = subparsers.add_parser("log", help="print a batch job's log")
    log.add_argument("job_id", type=int)
    log.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    _client_options(log)
    log.set_defaults(handler=_log)

    fetch = subparsers.add_parser("fetch", help="download a batch job's output files")
    fetch.add_argument("job_id", type=int)
    fetch.add_argument("--dir", type=Path, default=None, help="default ./job-<id>")
    _client_options(fetch)
    fetch.set_defaults(handler=_fetch)


# operator commands ----------------------------------------------------------------------------


def _open_store(url: str) -> Any:
    from jobqueue.store import JobStore

    try:
        return JobStore.open(url)
    except Exception as error:
        raise SystemExit(f"allotment: error: cannot open the database {url}: {error}") from None


def _token_create(args: argparse.Namespace) -> int:
    file = _sqlite_file(args.db)
    is_new = file is not None and not file.exists()
    store = _open_store(args.db)
    try:
        print(store.create_token(args.user, args.collab))
    except JobQueueError as error:
        raise SystemExit(f"allotment: error: {error}") from None
    finally:
        store.close()
    if is_new:
        # Most likely run from another folder than the server's: say so, the token is good
        # only for a service on this database.
        print(
            f"allotment: note: {file} did not exist and was made for this token; a service on"
            " another database will not know it (--db names the service's)",
            file=sys.stderr,
        )
    return 0


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _token_revoke(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    try:
        if not store.revoke_token(args.token):
            print("allotment: error: no such token", file=sys.stderr)
            return 1
    finally:
        store.close()
    return 0


# user commands --------------------------------------------------------------------------------


class _Api:
    """A tiny JSON client of the batch service (standard library only)."""

    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise SystemExit("allotment: error: no token: pass --token or set ALLOTMENT_TOKEN")
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            try:
                said = json.loads(error.read())
                # the API says "detail"; /userinfo, as EBRAINS IAM, "error_description"
                detail = said.get("detail") or said.get("error_description") or error.reason
            except (ValueError, AttributeError):
                detail = error.reason
            raise SystemExit(f"allotment: error: {detail}") from None
        except (http.client.HTTPException, ValueError):
            raise SystemExit(
                f"allotment: error: {self.url} does not answer as the batch service does"
                " (is it the allocation server's port? the batch service's is --batch-port)"
            ) from None
        except OSError as error:
            raise SystemExit(f"allotment: error: cannot reach {self.url}: {error}") from None

    def user(self) -> str:
        info = self.call("GET", "/userinfo")
        name: str = info["preferred_username"]
        return name


def _code_of(source: str) -> str:
    """What `submit` sends as the job's code: the text of a script, an archive, or a URL.

    Raises:
        SystemExit: the source is missing, no script, or more than the service reads.
    """
    code = _read_code(source)
    # the rest of the body is small next to this limit
    if len(code.encode("utf-8", "surrogatepass")) > MAX_REQUEST_BYTES - 64 * 1024:
        raise SystemExit(
            f"allotment: error: {source} is more than the service takes in one request"
            f" ({MAX_REQUEST_BYTES // (1024 * 1024)} MiB, an archive a third less as it is sent"
            " in base64); put the code in a git repository or an archive at an http(s) URL"
        )
    return code


def _read_code(source: str) -> str:
    path = Path(source).expanduser()
    if not path.exists():
        if source.startswith(("http://", "https://")):
            return source
        raise SystemExit(f"allotment: error: {source} does not exist")
    if path.is_dir():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for item in sorted(path.iterdir()):
                if not item.name.startswith("."):
                    archive.add(item, arcname=item.name)
        return "data:application/gzip;base64," + base64.b64encode(buffer.getvalue()).decode()
    if path.suffix == ".zip":
        return "data:application/zip;base64," + base64.b64encode(path.read_bytes()).decode()
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        # the service opens any tar, compressed or not
        return "data:application/gzip;base64," + base64.b64encode(path.read_bytes()).decode()
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SystemExit(
            f"allotment: error: {source} is no script (not UTF-8 text); submit a script, a"
            " directory, or a .zip, .tar, .tar.gz or .tgz archive"
        ) from None


def _submit(args: argparse.Namespace) -> int:
    api = _Api(args.url, args.token)
    body: dict[str, Any] = {
        "code": _code_of(args.source),
        "collab": args.collab or f"private-{api.user()}",
        "hardware_platform": "SpiNNaker",
        "command": args.command,
        "tags": args.tag,
    }
    if args.config:
        try:
            body["hardware_config"] = json.loads(args.config)
        except json.JSONDecodeError as error:
            raise SystemExit(f"allotment: error: --config is not JSON: {error}") from None
    job = api.call("POST", "/jobs/", body)
    if args.no_wait:
        print(job["id"])
        return 0
    try:
        final = _wait(api, job["id"])
    except KeyboardInterrupt:
        return _stopped_waiting(job["id"])
    print(f"job {job['id']} {final['status']}")
    return 0 if final["status"] == "finished" else 1


def _stopped_waiting(job_id: int) -> int:
    """Ctrl-C while waiting: the job goes on; say how to follow it (exit status 130)."""
    print(
        f"\nallotment: stopped waiting; job {job_id} goes on"
        f" (allotment log {job_id} --follow, or allotment jobs)",
        file=sys.stderr,
    )
    return 130


def _wait(api: _Api, job_id: int) -> dict[str, Any]:
    """Poll until the job ends, with a progress line on stderr when it is a terminal."""
    started = time.monotonic()
    is_tty = sys.stderr.isatty()
    while True:
        job: dict[str, Any] = api.call("GET", f"/jobs/{job_id}")
        where = f", #{job['queue_position']} in queue" if job.get("queue_position") else ""
        line = f"job {job_id}: {job['status']}{where} ({time.monotonic() - started:.0f} s)"
        if is_tty:
            print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
        if job["status"] in _FINAL:
            if is_tty:
                print(file=sys.stderr)
            return job
        time.sleep(0.5)


def _jobs(args: argparse.Namespace) -> int:
    api = _Api(args.url, args.token)
    query = f"?size={args.limit}" + (f"&collab={args.collab}" if args.collab else "")
    rows = api.call("GET", f"/jobs/{query}")
    print(f"{'ID':>6}  {'STATUS':10}  {'SUBMITTED':20}  {'COLLAB':20}  CODE")
    for job in rows:
        code = " ".join(job["code"].split())
        if len(code) > 40:
            code = code[:37] + "..."
        print(
            f"{job['id']:>6}  {job['status']:10}  {job['timestamp_submission'][:19]:20}"
            f"  {job['collab']:20}  {code}"
        )
    return 0


def _log(args: argparse.Namespace) -> int:
    api = _Api(args.url, args.token)
    shown = ""
    try:
        while True:
            job = api.call("GET", f"/jobs/{args.job_id}?with_log=true")
            text = job["log"] or ""
            sys.stdout.write(_unshown(shown, text))
            sys.stdout.flush()
            shown = text
            if not args.follow or job["status"] in _FINAL:
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:
        return _stopped_waiting(args.job_id)


_OVERLAP_CHARS = 200
"""How much of the end of what was shown a follower looks for in a log that moved on."""


def _unshown(shown: str, text: str) -> str:
    """What of the log `text` a follower that showed the log `shown` has not shown yet.

    A long log is kept as its head and its end (the middle left out, with a line saying
    how much): once it is that long, its end moves on while its length stays the same.
    """
    if text.startswith(shown):
        return text[len(shown) :]
    seen = shown[-_OVERLAP_CHARS:]
    at = text.rfind(seen)
    if at >= 0:
        return text[at + len(seen) :]
    # More came than the end the service keeps: say so, and show that end.
    _, marker, end = text.rpartition(" of the log left out ...]\n")
    return f"\n[... part of the log left out ...]\n{end}" if marker else text


def _fetch(args: argparse.Namespace) -> int:
    api = _Api(args.url, args.token)
    job = api.call("GET", f"/jobs/{args.job_id}")
    if job["status"] not in _FINAL:
        raise SystemExit(
            f"allotment: error: job {args.job_id} is {job['status']}: its outputs come when it"
            f" has ended (allotment log {args.job_id} --follow)"
        )
    files = (job["output_data"] or {}).get("files", [])
    target: Path = args.dir or Path(f"job-{args.job_id}")
    for item in files:
        relative = Path(item["path"].split("/", 2)[-1])
        if relative.is_absolute() or ".." in relative.parts:
            continue
        destination = target / relative
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(item["url"], timeout=60) as answer:
                destination.write_bytes(answer.read())
        except urllib.error.URLError as error:
            raise SystemExit(f"allotment: error: cannot download {item['url']}: {error}") from None
        except OSError as error:
            raise SystemExit(f"allotment: error: cannot write {destination}: {error}") from None
        print(destination)
    if not files:
        print(f"allotment: job {args.job_id} has no output files", file=sys.stderr)
    return 0


# the processes --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jobqueue serve|runner`: the processes `allotment serve` starts."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m jobqueue")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="the batch service and its runner")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_BATCH_PORT)
    runner = commands.add_parser("runner", help="a runner alone, taking jobs from --db")
    for sub in (serve, runner):
        _db_option(sub)
        add_runner_options(sub)
        sub.add_argument("--spalloc-host", default="127.0.0.1", help="the allocation server")
        sub.add_argument("--spalloc-port", type=int, default=22244)
        sub.add_argument(
            "--virtual", action="store_true", help="run PyNN scripts virtually, no server"
        )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = runner_config(args, None if args.virtual else args.spalloc_host, args.spalloc_port)
    from jobqueue import service

    if args.command == "serve":
        return service.serve(host=args.host, port=args.port, db_url=args.db, runner=config)
    return service.run_runner(db_url=args.db, runner=config)
