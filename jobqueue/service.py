"""The batch service process: the HTTP API and pages (uvicorn) plus the runner, until a signal.

It runs in a process of its own so the allocation server's event loop never waits on it.
On start it prints one line, `allotment batch ready: http://HOST:PORT ...`, on stdout (what
`allotment serve` waits for) and stops cleanly on SIGTERM or SIGINT (running jobs are killed
and end as error).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import replace

import uvicorn

from jobqueue.api import create_app
from jobqueue.errors import JobQueueError
from jobqueue.runner import Runner, RunnerConfig
from jobqueue.store import JobStore

__all__ = ["READY_PREFIX", "run_runner", "serve"]

log = logging.getLogger("allotment.batch")

READY_PREFIX = "allotment batch ready: "


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


def serve(*, host: str, port: int, db_url: str, runner: RunnerConfig) -> int:
    """Serve the batch API on host:port with a runner of `runner.n_slots` slots (0: none)."""
    try:
        store = JobStore.open(db_url)
    except JobQueueError as error:
        log.error("cannot start the batch service: %s", error)
        return 2
    except Exception as error:  # the driver's own errors: unreachable server, bad file
        log.error("cannot start the batch service: database %s: %s", _redacted(db_url), error)
        return 2
    try:
        sock = _listen(host, port)
    except OSError as error:
        log.error("cannot start the batch service: %s:%d: %s", host, port, error)
        return 2
    config = replace(runner, jobs_dir=runner.jobs_dir.resolve())
    worker = Runner(store, config) if config.n_slots > 0 else None
    app = create_app(store, config.jobs_dir, on_submit=worker.wake if worker else None)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    bound_host, bound_port = sock.getsockname()[:2]

    async def announce() -> None:
        # uvicorn offers a flag, not an event, for "started"
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        print(
            f"{READY_PREFIX}http://{bound_host}:{bound_port}"
            f" (runners: {config.n_slots}; jobs in {config.jobs_dir})",
            flush=True,
        )

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(announce())
            await server.serve(sockets=[sock])

    # uvicorn raises the SIGTERM it caught again once it has stopped; with the default
    # handler that would kill the process before the runner stops (and frees its standby)
    signal.signal(signal.SIGTERM, lambda *_: None)
    if worker is not None:
        worker.start()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            worker.stop()
        store.close()
    return 0


def run_runner(*, db_url: str, runner: RunnerConfig) -> int:
    """Run a runner alone (no HTTP) until SIGTERM/SIGINT: how a site adds runner hosts."""
    import threading

    try:
        store = JobStore.open(db_url)
    except Exception as error:
        log.error("cannot start the runner: database %s: %s", _redacted(db_url), error)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = Runner(store, replace(runner, jobs_dir=runner.jobs_dir.resolve()))
    worker.start()
    print(f"allotment runner ready: {worker.runner_id}", flush=True)
    try:
        stop.wait()
    finally:
        worker.stop()
        store.close()
    return 0


def _redacted(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, where = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}@{where}"
