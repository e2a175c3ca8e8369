"""Runner processes scale out on PostgreSQL: three of them share one queue, no job runs twice."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest


class _Tally:
    """A TCP server counting the job ids scripts report (the network is shared with jobs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: Counter[int] = Counter()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                data = connection.makefile().read()
            for line in data.split():
                self.seen[int(line)] += 1


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
        tally = _Tally()
        script = (
            "import os, socket, time\n"
            f"with socket.create_connection(('127.0.0.1', {tally.port})) as s:\n"
            "    s.sendall(os.environ['NMPI_JOB_ID'].encode() + b'\\n')\n"
            "time.sleep(1)\n"
        )
        uris = [
            client.submit_job(source=script, platform="SpiNNaker", collab_id="my-collab")
            for _ in range(12)
        ]
        ids = [int(uri.rsplit("/", 1)[1]) for uri in uris]
        ended = [service.wait_for(i, ("finished", "error"), timeout_s=120) for i in ids]
        assert [j["status"] for j in ended] == ["finished"] * 12, [j["log"] for j in ended]
        time.sleep(0.2)
        assert dict(tally.seen) == dict.fromkeys(ids, 1)
        assert len({j["provenance"]["runner"] for j in ended}) == 3
    finally:
        for process in runners:
            process.terminate()
        for process in runners:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
