"""Fixtures for the batch service: a real service process, tokens, and the real `nmpi` client.

`batch_service()` starts `python -m jobqueue serve` (port 0, its own SQLite file and jobs
directory, PyNN scripts virtual) and reads its URL from the ready line; `full_service()` starts
`allotment serve` (allocation server + batch service) the way a user does. Jobs run under
bubblewrap; without `bwrap` these tests skip (fail on CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.store import JobStore
from tests.e2e.conftest import write_server_config

REQUIRE_ENV = "ALLOTMENT_REQUIRE_SERVICES"
READY_TIMEOUT_S = 60.0
_BATCH_READY = re.compile(r"allotment batch ready: (http://\S+)")
_FULL_READY = re.compile(r"listening on ([0-9.]+):(\d+).*batch service at (http://\S+?)\)")


def require_bwrap() -> None:
    """Skip (fail under ALLOTMENT_REQUIRE_SERVICES=1) when bubblewrap is missing."""
    if shutil.which("bwrap") is None:
        reason = "bubblewrap (bwrap) is not installed; batch jobs cannot be sandboxed"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)


class Service:
    """A batch service process; `url` is where it answers, `store` its database."""

    def __init__(self, command: list[str], cwd: Path, db_url: str, pattern: re.Pattern[str]):
        self.command = command
        self.cwd = cwd
        self.db_url = db_url
        self.pattern = pattern
        self.url = ""
        self.spalloc_port = 0
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.store = JobStore.open(db_url)

    def start(self) -> Service:
        ready = threading.Event()
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

        def drain(process: subprocess.Popen[str]) -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.output.append(line)
                match = self.pattern.search(line)
                if match and not ready.is_set():
                    self.url = match.groups()[-1]
                    if len(match.groups()) == 3:
                        self.spalloc_port = int(match.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=drain, args=(self.process,), daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S) or not self.url:
            self.kill()
            raise AssertionError("service did not start:\n" + "".join(self.output))
        return self

    def token(self, user: str = "alice", collabs: tuple[str, ...] = ("my-collab",)) -> str:
        return self.store.create_token(user, collabs)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the service process alone (its children are left to their own devices)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait_for(self, job_id: int, statuses: tuple[str, ...], timeout_s: float = 60) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.store.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} is still {self.store.job(job_id)['status']}")


class _Started:
    """The services a fixture started: each is stopped and its store closed at the end."""

    def __init__(self) -> None:
        self._services: list[Service] = []

    def start(self, service: Service) -> Service:
        self._services.append(service)
        return service.start()

    def __enter__(self) -> _Started:
        return self

    def __exit__(self, *_: object) -> None:
        for service in self._services:
            with contextlib.suppress(Exception):
                service.stop()
            service.store.close()


@pytest.fixture
def batch_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start batch services (`python -m jobqueue serve`) in tmp_path; stopped at teardown."""
    require_bwrap()

    def start(*extra: str, db_url: str | None = None, runners: int = 2) -> Service:
        url = db_url or f"sqlite:///{tmp_path / 'allotment.db'}"
        command = [
            sys.executable, "-m", "jobqueue", "serve", "--port", "0", "--db", url,
            "--jobs-dir", str(tmp_path / "jobs"), "--runners", str(runners), "--virtual",
            "--no-warmup", *extra,
        ]  # fmt: skip
        return started.start(Service(command, tmp_path, url, _BATCH_READY))

    with _Started() as started:
        yield start


@pytest.fixture
def full_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start `allotment serve` (allocation server and batch service) in tmp_path."""
    require_bwrap()
    config = write_server_config(tmp_path)  # no power delays, boards free at once

    def start(*extra: str, is_warming_up: bool = False) -> Service:
        url = f"sqlite:///{tmp_path / 'allotment.db'}"
        if not is_warming_up:
            extra = (*extra, "--no-warmup")
        command = [
            sys.executable, "-m", "allocator.cli", "serve", "--port", "0", "--batch-port", "0",
            "--config", str(config), "--db", url, "--jobs-dir", str(tmp_path / "jobs"), *extra,
        ]  # fmt: skip
        return started.start(Service(command, tmp_path, url, _FULL_READY))

    with _Started() as started:
        yield start


@pytest.fixture
def nmpi_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Service, str], Any]:
    """A factory of real `nmpi.Client`s for a service and a token (token file in tmp_path)."""
    import nmpi.nmpi_user

    monkeypatch.setattr(nmpi.nmpi_user, "TOKENFILE", str(tmp_path / ".hbptoken"))

    def make(service: Service, token: str) -> Any:
        client = nmpi.Client(
            token=token,
            job_service=service.url + "/",
            user_info_endpoint=service.url + "/userinfo",
        )
        client.sleep_interval = 0.5
        return client

    return make


@pytest.fixture
def alice(
    batch_service: Callable[..., Service], nmpi_client: Callable[[Service, str], Any]
) -> Callable[..., tuple[Service, Any]]:
    """Start a batch service (options as `batch_service`) and a client of alice's on it."""

    def start(*extra: str, **options: Any) -> tuple[Service, Any]:
        service = batch_service(*extra, **options)
        return service, nmpi_client(service, service.token())

    return start


def run_job(client: Any, source: str, **options: Any) -> Any:
    """Submit `source` to my-collab on SpiNNaker and wait until it ends; the job."""
    return client.submit_job(
        source=source, platform="SpiNNaker", collab_id="my-collab", wait=True, **options
    )


def post(service: Service, path: str, body: bytes) -> tuple[int, Any]:
    """POST `body` (JSON) to the service as alice; the status and the decoded answer."""
    request = urllib.request.Request(
        service.url + path,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {service.token()}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
