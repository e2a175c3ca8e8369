"""Runner processes scale out on PostgreSQL: three of them share one queue, no job runs twice."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest


class _RunWatcher:
    """Names of the marker files each job's runs leave in its directory, seen from outside.

    A job's sandbox reaches nothing of the host (no network), but its own directory is the
    same directory outside: each run of the script leaves a marker of a name of its own
    (and a second run would first wipe the directory), so two names for one job mean it ran
    twice.
    """

    def __init__(self, jobs_dir: Path) -> None:
        self._jobs_dir = jobs_dir
        self.seen: dict[int, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            for marker in self._jobs_dir.glob("*/ran-*"):
                self.seen[int(marker.parent.name)].add(marker.name)

    def stop(self) -> dict[int, set[str]]:
        self._stop.set()
        self._thread.join()
        return dict(self.seen)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_runner_processes_share_the_queue_without_running_a_job_twice(
    batch_service: Any, nmpi_client: Any, pg_url: str, tmp_path: Path
) -> None:
    service = batch_service(db_url=pg_url, runners=0)
    client = nmpi_client(service, service.token())
    runners = []
    try:
        for _ in range(3):
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jobqueue",
                    "runner",
                    "--db",
                    pg_url,
                    "--jobs-dir",
                    str(tmp_path / "jobs"),
                    "--runners",
                    "2",
                    "--virtual",
                    "--no-warmup",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            runners.append(process)
            assert process.stdout is not None
            assert process.stdout.readline().startswith("allotment runner ready:")
        watcher = _RunWatcher(tmp_path / "jobs")
        script = "import time, uuid\nopen(f'ran-{uuid.uuid4().hex}', 'w').close()\ntime.sleep(1)\n"
        uris = [
            client.submit_job(source=script, platform="SpiNNaker", collab_id="my-collab")
            for _ in range(12)
        ]
        ids = [int(uri.rsplit("/", 1)[1]) for uri in uris]
        ended = [service.wait_for(i, ("finished", "error"), timeout_s=120) for i in ids]
        assert [j["status"] for j in ended] == ["finished"] * 12, [j["log"] for j in ended]
        seen = watcher.stop()
        assert sorted(seen) == sorted(ids)
        assert all(len(markers) == 1 for markers in seen.values()), seen
        assert len({j["provenance"]["runner"] for j in ended}) == 3
    finally:
        for process in runners:
            process.terminate()
        for process in runners:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
