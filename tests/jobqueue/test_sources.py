"""Code from git repositories and archives, and the output and memory limits."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import source
from tests.jobqueue.conftest import post, run_job


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


def _git_repository(work: Path, files: dict[str, str]) -> Path:
    work.mkdir()
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    for name, text in files.items():
        (work / name).write_text(text)
    subprocess.run([*git, "add", *files], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "network"], check=True)
    return work


def _serve_bare(work: Path, root: Path, name: str) -> None:
    """Put a bare copy of `work` under `root` as git's "dumb" HTTP transport serves it."""
    bare = root / name
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)


def test_a_git_repository_is_cloned_and_run(
    alice: Any, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = file_server
    work = _git_repository(
        tmp_path / "network",
        {"run.py": "import os\nprint('cloned into', os.path.basename(os.getcwd()))\n"},
    )
    _serve_bare(work, root, "network.git")
    _, client = alice()
    job = run_job(client, f"{url}/network.git")
    assert job["status"] == "finished", job["log"]
    assert "cloned into network" in job["log"]


def test_code_urls_other_than_http_are_refused_unrun(alice: Any, tmp_path: Path) -> None:
    # The runner fetches code outside the sandbox: a file:// URL would hand a job another
    # job's files (or a local repository) that the sandbox hides from it.
    secret = tmp_path / "secret"
    secret.mkdir()
    with tarfile.open(secret / "other-job.tar.gz", "w:gz") as archive:
        (secret / "data.txt").write_text("SECRET 42")
        archive.add(secret / "data.txt", arcname="data.txt")
    work = _git_repository(tmp_path / "local", {"run.py": "print(open('data.txt').read())\n"})
    _, client = alice()
    for code in (f"file://{secret}/other-job.tar.gz", f"file://{work}", f"ssh://localhost{work}"):
        job = run_job(client, code, command="-c \"print(open('data.txt').read())\"")
        assert job["status"] == "error", job["log"]
        assert "SECRET 42" not in job["log"]
        assert "code URLs must be http:// or https://" in job["log"]


def test_a_repository_cannot_pull_a_local_submodule(
    alice: Any, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = file_server
    secret = _git_repository(tmp_path / "secret", {"data.txt": "SECRET 42\n"})
    work = _git_repository(tmp_path / "network", {"run.py": "print('ran')\n"})
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(
        [*git, "-c", "protocol.file.allow=always", "submodule", "add", "-q", f"file://{secret}"],
        check=True,
        capture_output=True,
    )
    subprocess.run([*git, "commit", "-q", "-m", "with a local submodule"], check=True)
    _serve_bare(work, root, "network.git")
    _, client = alice()
    command = "-c \"print(open('secret/data.txt').read())\""
    job = run_job(client, f"{url}/network.git", command=command)
    assert job["status"] == "error", job["log"]
    assert "SECRET 42" not in job["log"]
    assert "cannot clone" in job["log"]


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


def _tar(root: Path, name: str, files: dict[str, str], mode: str) -> Path:
    path = root / name
    staging = root.parent / f"staging-{name}"
    staging.mkdir()
    with tarfile.open(path, mode) as archive:
        for member, text in files.items():
            (staging / member).write_text(text)
            archive.add(staging / member, arcname=member)
    return path


@pytest.mark.parametrize(
    ("name", "mode"),
    [("model.tar.xz", "w:xz"), ("model.tar.bz2", "w:bz2"), ("download", "w:gz"), ("plain", "w")],
)
def test_archives_are_known_by_their_suffix_or_their_first_bytes(
    file_server: tuple[str, Path], tmp_path: Path, name: str, mode: str
) -> None:
    # xz and bzip2 tars, and archives behind a link with no suffix, used to be taken for git
    # repositories ("cannot clone ... repository not found").
    url, root = file_server
    _tar(root, name, {"run.py": "print('unpacked')\n"}, mode)
    workdir = tmp_path / "job"
    workdir.mkdir()
    prepared = source.prepare(f"{url}/{name}", "run.py {system}", workdir)
    assert prepared.cwd == workdir
    assert (workdir / "run.py").read_text() == "print('unpacked')\n"


def test_a_url_that_is_neither_a_repository_nor_an_archive_says_it_cannot_clone(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = file_server
    (root / "page.html").write_text("<html>not code</html>")
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(source.SourceError, match=f"cannot clone {url}/page.html"):
        source.prepare(f"{url}/page.html", None, workdir)


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Headers at once, then a byte every half second, for ever."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_sending_slowly_is_given_up_at_the_fetch_time_limit(tmp_path: Path) -> None:
    # Each read had a timeout, the whole download none: a server sending a byte now and
    # then held the job (and its runner's slot) for ever.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    workdir = tmp_path / "job"
    workdir.mkdir()
    url = f"http://127.0.0.1:{server.server_address[1]}/code.zip"
    started = time.monotonic()
    try:
        with pytest.raises(source.SourceError, match="took longer than the time allowed"):
            source.prepare(url, None, workdir, fetch_timeout_s=2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 10


def test_the_reports_of_a_script_run_in_its_repository_are_zipped(
    alice: Any, file_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = file_server
    script = (
        "import os\n"
        "os.makedirs('reports/run_1')\n"
        "open('reports/run_1/placement.rpt', 'w').write('p')\n"
    )
    work = _git_repository(tmp_path / "network", {"run.py": script})
    _serve_bare(work, root, "network.git")
    _, client = alice()
    job = run_job(client, f"{url}/network.git")
    assert job["status"] == "finished", job["log"]
    files = client.download_data(job, local_dir=str(tmp_path / "fetched"))
    names = sorted(Path(f).name for f in files)
    assert names == sorted(["reports.zip", f"output_{job['id']}.txt"])
    where = tmp_path / "fetched" / "my-collab" / str(job["id"])
    with zipfile.ZipFile(where / "reports.zip") as archive:
        assert archive.namelist() == ["reports/run_1/placement.rpt"]


def _submit(service: Any, body: dict[str, Any]) -> tuple[int, Any]:
    return post(service, "/jobs/", json.dumps(body).encode())


def test_input_data_is_downloaded_into_the_jobs_directory(
    alice: Any, file_server: tuple[str, Path]
) -> None:
    # It was stored and never fetched: the script found no data.csv.
    url, root = file_server
    (root / "data.csv").write_text("t,v\n0,1\n")
    (root / "weights 1.txt").write_text("0.5\n")
    service, _ = alice()
    base = {"collab": "my-collab", "hardware_platform": "SpiNNaker"}
    code = "print(open('data.csv').read().split()[1], open('weights 1.txt').read().strip())"
    inputs = [{"url": f"{url}/data.csv"}, {"url": f"{url}/weights%201.txt"}]
    status, job = _submit(service, {**base, "code": code, "input_data": inputs})
    assert status == 201, job
    ended = service.wait_for(job["id"], ("finished", "error"))
    assert ended["status"] == "finished", ended["log"]
    assert "0,1 0.5" in ended["log"]
    assert "input data downloaded: data.csv, weights 1.txt" in ended["log"]
    listed = [output.path for output in ended["outputs"]]
    assert listed == [f"output_{job['id']}.txt"], listed  # inputs are no outputs
    # an item with no URL is refused at submission (the real DataItem requires one)
    status, refused = _submit(service, {**base, "code": code, "input_data": [{"path": "x"}]})
    assert status == 422, refused
    assert "input_data" in json.dumps(refused)
    # one that cannot be fetched ends the job as error, unrun
    status, job = _submit(service, {**base, "code": code, "input_data": [{"url": f"{url}/none"}]})
    assert status == 201, job
    ended = service.wait_for(job["id"], ("finished", "error"))
    assert ended["status"] == "error"
    assert f"cannot download {url}/none" in ended["log"]
