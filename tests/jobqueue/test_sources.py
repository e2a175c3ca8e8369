"""Code from git repositories and archives, and the output and memory limits."""

from __future__ import annotations

import functools
import http.server
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobqueue.conftest import run_job


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on loopback serving a directory (the archives a job names)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_an_archive_url_is_unpacked_and_its_command_run(
    alice: Any, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = file_server
    source = tmp_path / "model"
    source.mkdir()
    (source / "model.py").write_text("import sys\nprint('model args', sys.argv[1:])\n")
    with tarfile.open(root / "model.tar.gz", "w:gz") as archive:
        archive.add(source / "model.py", arcname="model.py")
    _, client = alice()
    job = run_job(client, f"{url}/model.tar.gz", command="model.py {system} --fast")
    assert job["status"] == "finished", job["log"]
    assert "model args ['spiNNaker', '--fast']" in job["log"]


def test_a_git_repository_is_cloned_and_run(alice: Any, tmp_path: Path) -> None:
    repo = tmp_path / "network.git"
    repo.mkdir()
    (repo / "run.py").write_text("import os\nprint('cloned into', os.path.basename(os.getcwd()))\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "run.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "network"], check=True)
    _, client = alice()
    job = run_job(client, f"file://{repo}")
    assert job["status"] == "finished", job["log"]
    assert "cloned into network" in job["log"]


def test_an_unreachable_archive_is_an_error_with_the_reason(alice: Any) -> None:
    _, client = alice()
    job = run_job(client, "http://127.0.0.1:9/nothing.zip")
    assert job["status"] == "error"
    assert "cannot download http://127.0.0.1:9/nothing.zip" in job["log"]


def test_a_job_writing_past_its_output_limit_ends_as_error(alice: Any) -> None:
    _, client = alice("--job-output-mb", "1")
    script = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 3_000_000)\n"
    job = run_job(client, script)
    assert job["status"] == "error"
    assert "OSError: [Errno 27] File too large" in job["log"]


def test_a_job_past_its_memory_limit_ends_as_error(alice: Any) -> None:
    _, client = alice("--job-memory-mb", "300")
    script = "block = bytearray(1_000_000_000)\nprint('allocated')\n"
    job = run_job(client, script)
    assert job["status"] == "error"
    assert "MemoryError" in job["log"]
    assert "allocated" not in job["log"]


def test_many_files_past_the_output_limit_end_the_job(alice: Any) -> None:
    _, client = alice("--job-output-mb", "1")
    script = (
        "import time\n"
        "for i in range(4):\n"
        "    open(f'part{i}.bin', 'wb').write(b'x' * 500_000)\n"
        "time.sleep(30)\n"
    )
    job = run_job(client, script)
    assert job["status"] == "error"
    assert "the job wrote more than its limit of 1048576 bytes" in job["log"]
