"""The batch commands of `allotment`: token, submit, jobs, log, fetch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import requests


def _allotment(
    *args: str, cwd: Path, env_token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if env_token:
        env["ALLOTMENT_TOKEN"] = env_token
    return subprocess.run(
        [sys.executable, "-m", "allocator.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_token_create_prints_the_token_alone_and_revoke_ends_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'allotment.db'}"
    made = _allotment(
        "token", "create", "--user", "alice", "--collab", "c1", "--db", db, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n"
    # a new database is made for it, which is said (the server's may be elsewhere)
    assert "allotment.db did not exist and was made for this token" in made.stderr
    again = _allotment(
        "token", "create", "--user", "bob", "--collab", "c1", "--db", db, cwd=tmp_path
    )
    assert (again.returncode, again.stderr) == (0, "")
    assert len(token) >= 40
    from jobqueue.store import TOKEN_PREFIX, JobStore

    # a token never looks like an option to the command line that has to take it back
    assert token.startswith(TOKEN_PREFIX)
    assert not TOKEN_PREFIX.startswith("-")

    store = JobStore.open(db)
    try:
        identity = store.identity(token)
        assert identity is not None
        assert (identity.user, identity.collabs) == ("alice", ("c1",))
        assert _allotment("token", "revoke", token, "--db", db, cwd=tmp_path).returncode == 0
        assert store.identity(token) is None
    finally:
        store.close()


def test_submit_jobs_log_and_fetch(batch_service: Any, tmp_path: Path) -> None:
    service = batch_service()
    token = service.token()
    url = ("--url", service.url)
    (tmp_path / "run.py").write_text("print('from a file')\nopen('result.txt', 'w').write('42')\n")
    submitted = _allotment("submit", "run.py", *url, cwd=tmp_path, env_token=token)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.split()[1])
    assert submitted.stdout == f"job {job_id} finished\n"

    listed = _allotment("jobs", *url, cwd=tmp_path, env_token=token)
    assert f"{job_id:>6}  finished" in listed.stdout
    log = _allotment("log", str(job_id), "--follow", *url, cwd=tmp_path, env_token=token)
    assert log.stdout == "from a file\n"
    fetched = _allotment("fetch", str(job_id), "--dir", "out", *url, cwd=tmp_path, env_token=token)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "result.txt").read_text() == "42"

    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("import sys, helper\nprint('argv', sys.argv[1:], helper.X)\n")
    (project / "helper.py").write_text("X = 7\n")
    from_dir = _allotment(
        "submit", "project", "--command", "main.py {system} extra", "--no-wait", *url,
        cwd=tmp_path, env_token=token,
    )  # fmt: skip
    assert from_dir.returncode == 0, from_dir.stderr
    job = service.wait_for(int(from_dir.stdout), ("finished", "error"))
    assert "argv ['spiNNaker', 'extra'] 7" in job["log"], job["log"]


def test_bad_input_gets_one_sentence(batch_service: Any, tmp_path: Path) -> None:
    service = batch_service()
    token = service.token()
    missing = _allotment("submit", "nope.py", "--url", service.url, cwd=tmp_path, env_token=token)
    assert (missing.returncode, missing.stderr) == (1, "allotment: error: nope.py does not exist\n")
    no_token = _allotment("jobs", "--url", service.url, cwd=tmp_path)
    assert "no token" in no_token.stderr
    assert "Traceback" not in no_token.stderr
    bad = _allotment("jobs", "--url", service.url, cwd=tmp_path, env_token="wrong")
    assert bad.stderr == "allotment: error: Token may have expired\n"
    answer = requests.post(
        service.url + "/jobs/",
        json={"code": "print(1)", "collab": "my-collab", "hardware_platform": "NEST"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "detail": "hardware platform 'NEST' is not available here (this service runs SpiNNaker)"
    }


def test_careless_commands_get_one_sentence(batch_service: Any, tmp_path: Path) -> None:
    service = batch_service()
    token = service.token()
    url = ("--url", service.url)

    def refused(result: subprocess.CompletedProcess[str], *facts: str) -> None:
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("allotment: error: "), result.stderr
        for fact in facts:
            assert fact in result.stderr, result.stderr

    (tmp_path / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    refused(_allotment("submit", "figure.png", *url, cwd=tmp_path, env_token=token), "no script")
    # a bad token is the server's sentence whichever command meets it (the API's or, for
    # submit without a collab, the user-info endpoint's, as on EBRAINS)
    for command in (("jobs",), ("submit", "slow.py")):
        said = _allotment(*command, *url, cwd=tmp_path, env_token="wrong").stderr
        assert said in (
            "allotment: error: Token may have expired\n",
            "allotment: error: Token verification failed\n",
        ), said

    # a port that answers another protocol (the allocation server's, say)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        def answer() -> None:
            conn, _ = other.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'{"exception": "line is not valid json"}\n')

        threading.Thread(target=answer, daemon=True).start()
        wrong = _allotment(
            "jobs", "--url", f"http://127.0.0.1:{port}", cwd=tmp_path, env_token=token
        )
    refused(wrong, "does not answer as the batch service does")

    job_id = _allotment("submit", "slow.py", "--no-wait", *url, cwd=tmp_path, env_token=token)
    job_id_text = job_id.stdout.strip()
    refused(
        _allotment("fetch", job_id_text, *url, cwd=tmp_path, env_token=token),
        f"job {job_id_text} is ",
        "its outputs come when it has ended",
    )
    # Ctrl-C while following the log: the job goes on, and the command says how to follow it.
    following = subprocess.Popen(
        [sys.executable, "-m", "allocator.cli", "log", job_id_text, "--follow", *url],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ALLOTMENT_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert following.stdout is not None
    assert following.stdout.readline() == "started\n"
    following.send_signal(signal.SIGINT)
    _, said = following.communicate(timeout=60)
    assert following.returncode == 130
    assert "Traceback" not in said
    assert f"job {job_id_text} goes on (allotment log {job_id_text} --follow" in said

    (tmp_path / "a-file").write_text("")
    (tmp_path / "quick.py").write_text("open('r.txt', 'w').write('1')\n")
    quick = _allotment("submit", "quick.py", *url, cwd=tmp_path, env_token=token)
    assert quick.returncode == 0, quick.stderr
    quick_id = quick.stdout.split()[1]
    refused(
        _allotment("fetch", quick_id, "--dir", "a-file", *url, cwd=tmp_path, env_token=token),
        "cannot write a-file/",
    )


def test_submit_of_more_than_the_service_takes_says_so_and_sends_nothing(
    batch_service: Any, tmp_path: Path
) -> None:
    service = batch_service()
    model = tmp_path / "model"
    model.mkdir()
    # random bytes do not compress: the archive is about as large as the file
    (model / "weights.bin").write_bytes(os.urandom(50 * 1024 * 1024))
    (model / "run.py").write_text("print(1)\n")
    sent = _allotment(
        "submit", "model", "--url", service.url, cwd=tmp_path, env_token=service.token()
    )
    assert sent.returncode != 0
    assert "more than the service takes in one request (64 MiB" in sent.stderr
    assert "Traceback" not in sent.stderr
    listed = _allotment("jobs", "--url", service.url, cwd=tmp_path, env_token=service.token())
    assert "finished" not in listed.stdout
