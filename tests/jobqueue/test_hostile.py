"""What a hostile script or an unkind client sends the batch service, and what it gets back.

A job's environment never reaches the process that builds its sandbox; the runner never
writes through links a job leaves; what a job puts where the runner writes cannot stop the
runner; archives are refused before they unpack past the job's limit; text the store cannot
keep is refused at the door; outputs are served so that no script of a job runs on the
service's origin.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.jobqueue.conftest import post, run_job


def test_a_jobs_environment_never_reaches_the_sandbox_itself(alice: Any) -> None:
    _, client = alice()
    # LD_DEBUG makes the dynamic loader report every library it loads, for any process
    # that has it in its environment: only the job's own processes may.
    job = run_job(client, "print('ran')", config={"LD_DEBUG": "files"})
    assert job["status"] == "finished", job["log"]
    assert "ran" in job["log"]
    assert "needed by /usr/bin/bwrap" not in job["log"]
    assert "/usr/bin/bwrap" not in job["log"]


LINKS_SCRIPT = """\
import os
job = os.environ["NMPI_JOB_ID"]
os.symlink(os.environ["VICTIM_LOG"], f"output_{job}.txt")
os.makedirs("reports/run_1")
with open("reports/run_1/provenance.txt", "w") as f:
    f.write("boards: 0\\n")
os.symlink(os.environ["VICTIM_ZIP"], "reports.zip")
print("links made")
"""


def test_links_a_job_leaves_are_never_written_through(alice: Any, tmp_path: Path) -> None:
    _, client = alice()
    victims = {"VICTIM_LOG": tmp_path / "victim.log", "VICTIM_ZIP": tmp_path / "victim.zip"}
    job = run_job(client, LINKS_SCRIPT, config={k: str(v) for k, v in victims.items()})
    assert job["status"] == "finished", job["log"]
    for victim in victims.values():
        assert not victim.exists()
    files = client.download_data(job, local_dir=str(tmp_path / "out"))
    names = sorted(Path(f).name for f in files)
    assert names == sorted(["reports.zip", f"output_{job['id']}.txt"])
    where = tmp_path / "out" / "my-collab" / str(job["id"])
    assert "links made" in (where / f"output_{job['id']}.txt").read_text()
    with zipfile.ZipFile(where / "reports.zip") as archive:
        assert archive.namelist() == ["reports/run_1/provenance.txt"]


LINKED_REPORTS_SCRIPT = """\
import os
os.symlink(os.environ["OUTSIDE"], "reports")
"""


def test_a_reports_folder_that_links_outside_is_not_archived(alice: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not the job's")
    _, client = alice()
    job = run_job(client, LINKED_REPORTS_SCRIPT, config={"OUTSIDE": str(outside)})
    assert job["status"] == "finished", job["log"]
    names = [Path(item["path"]).name for item in job["output_data"]["files"]]
    assert names == [f"output_{job['id']}.txt"]


def test_what_a_job_puts_in_the_logs_place_does_not_stop_the_runner(alice: Any) -> None:
    service, client = alice()  # two runners
    # Each leaves a folder where the runner writes the job's log file.
    blocker = "import os\nos.mkdir(f\"output_{os.environ['NMPI_JOB_ID']}.txt\")\nprint('left')"
    ids = [
        int(client.submit_job(source=blocker, platform="SpiNNaker", collab_id="my-collab")[6:])
        for _ in range(3)
    ]
    for job_id in ids:
        job = service.wait_for(job_id, ("finished", "error"))
        assert job["status"] == "finished", job["log"]
        assert "left" in job["log"]
    # Both runner slots are free again.
    assert run_job(client, "print('after')")["status"] == "finished"


def _zip_data_url(members: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return "data:application/zip;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_an_archive_unpacking_past_the_jobs_limit_is_refused_unpacked(alice: Any) -> None:
    service, client = alice("--job-output-mb", "1")
    bomb = _zip_data_url({"run.py": b"print('never')\n", "zeros.bin": bytes(3 << 20)})
    job = run_job(client, bomb)
    assert job["status"] == "error"
    assert f"more than the job's limit of {1 << 20}" in job["log"]
    assert "never" not in job["log"]
    assert not (service.cwd / "jobs" / str(job["id"]) / "zeros.bin").exists()


def _get(service: Any, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        service.url + path, headers={"Authorization": f"Bearer {service.token()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"tags": ["\ud800ab"]}, "not valid UTF-8"),
        ({"code": "print('\ud800')"}, "not valid UTF-8"),
        ({"hardware_config": {"X": "a\u0000b"}}, "NUL"),
        ({"hardware_config": {"timeout": "inf"}}, "positive number of hours"),
        ({"hardware_config": {"timeout": -1}}, "positive number of hours"),
        ({"hardware_config": {"timeout": True}}, "must be a number of hours"),
    ],
)
def test_text_the_store_cannot_keep_is_refused_and_the_job_list_stays_whole(
    batch_service: Any, fields: dict[str, Any], said: str
) -> None:
    service = batch_service()
    job = {"code": "print(1)", "collab": "my-collab", "hardware_platform": "SpiNNaker", **fields}
    # json.dumps escapes a lone surrogate (as a client may send it), which the service decodes
    status, answer = post(service, "/jobs/", json.dumps(job).encode())
    assert status == 422, answer
    assert said in answer["detail"]
    assert _get(service, "/jobs/?collab=my-collab") == (200, [])


def test_ids_past_the_databases_range_name_no_job(batch_service: Any) -> None:
    service = batch_service()
    for path in ("/jobs/99999999999999999999999", "/jobs/9223372036854775808"):
        status, answer = _get(service, path)
        assert status == 404, answer
    assert _get(service, "/jobs/?from_index=9223372036854775808") == (200, [])


HTML_SCRIPT = """\
with open("page.html", "w") as f:
    f.write("<script>fetch('/jobs/')</script>")
with open("plot.png", "wb") as f:
    f.write(b"\\x89PNG\\r\\n\\x1a\\n")
"""


def test_outputs_are_served_so_that_no_script_runs_on_the_services_origin(alice: Any) -> None:
    _, client = alice()
    job = run_job(client, HTML_SCRIPT)
    assert job["status"] == "finished", job["log"]
    urls = {Path(item["path"]).name: item["url"] for item in job["output_data"]["files"]}
    with urllib.request.urlopen(urls["page.html"], timeout=30) as answer:
        assert answer.headers["Content-Security-Policy"] == "sandbox"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Content-Disposition"] == "attachment"
    with urllib.request.urlopen(urls["plot.png"], timeout=30) as answer:
        assert answer.headers["Content-Security-Policy"] == "sandbox"
        assert answer.headers["Content-Disposition"] is None  # shown inline on the job page


def test_an_output_named_in_bytes_that_are_no_utf8_leaves_the_rest_listed(alice: Any) -> None:
    _, client = alice()
    script = 'open(b"bad\\xff\\xfe.txt", "wb").write(b"x")\nopen("good.txt", "w").write("y")\n'
    job = run_job(client, script)
    assert job["status"] == "finished", job["log"]
    names = sorted(Path(item["path"]).name for item in job["output_data"]["files"])
    assert names == sorted(["good.txt", f"output_{job['id']}.txt"])


def test_a_long_log_keeps_its_head_and_its_end_and_says_what_it_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobqueue import runner

    monkeypatch.setattr(runner, "_MAX_LOG_CHARS", 10)
    monkeypatch.setattr(runner, "_LOG_TAIL_CHARS", 5)
    run = runner._Run({}, Path("."))
    for piece in ("abcdefgh", "ijklmnop", "qrstuvwxyz", "Error"):
        run.append(piece)
    assert run.text() == "abcdefghij\n[... 16 characters of the log left out ...]\nError"
    assert run.n_chars == 31


def test_a_character_split_between_two_reads_of_the_log_stays_whole() -> None:
    from jobqueue import runner

    data = "né → ok\n".encode()
    pieces = [data[:2], data[2:5], data[5:]]  # "é" and "→" cut in the middle

    class Stream:
        def read1(self, _n: int) -> bytes:
            return pieces.pop(0) if pieces else b""

    run = runner._Run({}, Path("."))
    runner._read_into(Stream(), run)
    assert run.text() == "né → ok\n"


def test_a_tag_filter_matches_the_tag_only(batch_service: Any) -> None:
    service = batch_service()
    for tag in ("a_b1", "axb1", "a%"):
        job = {"code": "print(1)", "collab": "my-collab", "hardware_platform": "SpiNNaker"}
        status, _ = post(service, "/jobs/", json.dumps({**job, "tags": [tag]}).encode())
        assert status == 201
    status, _ = post(service, "/jobs/", json.dumps({**job, "tags": ["alpha", "beta"]}).encode())
    assert status == 201
    for tag, expected in (
        ("a_b1", [["a_b1"]]),
        ("a%", [["a%"]]),
        ("beta", [["alpha", "beta"]]),
        (", ", []),  # what lies between two tags is no tag
        ("A%", []),  # nor does case differ
        ("ALPHA", []),
    ):
        status, found = _get(service, f"/jobs/?collab=my-collab&tags={urllib.parse.quote(tag)}")
        assert status == 200
        assert [job["tags"] for job in found] == expected, tag


def test_the_jobs_environment_is_on_no_command_line(tmp_path: Path) -> None:
    from jobqueue.sandbox import BWRAP_ENVIRONMENT, sandboxed_command
    from tests.jobqueue.conftest import require_bwrap

    require_bwrap()
    jobs = tmp_path / "jobs"
    (jobs / "1").mkdir(parents=True)
    command, fds = sandboxed_command(
        ["/bin/sh", "-c", "echo $SECRET"],
        workdir=jobs / "1",
        cwd=jobs / "1",
        jobs_root=jobs,
        hidden_files=[],
        env={"SECRET": "s3cr3t value", "PATH": "/usr/bin:/bin"},
    )
    try:
        # any user on the host reads a process's arguments; only its own user its environment
        assert not any("s3cr3t" in part for part in command)
        ran = subprocess.run(
            command, env=dict(BWRAP_ENVIRONMENT), capture_output=True, text=True, pass_fds=fds
        )
    finally:
        for fd in fds:
            os.close(fd)
    assert (ran.returncode, ran.stdout) == (0, "s3cr3t value\n"), ran.stderr


def test_jobs_run_with_the_database_inside_the_jobs_folder(
    batch_service: Any, nmpi_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "jobs").mkdir()
    service = batch_service(db_url=f"sqlite:///{tmp_path / 'jobs' / 'jobs.db'}")
    client = nmpi_client(service, service.token())
    script = "import os\nprint('db seen:', os.path.exists(os.environ['DB']))\n"
    job = run_job(client, script, config={"DB": str(tmp_path / "jobs" / "jobs.db")})
    assert job["status"] == "finished", job["log"]
    assert "db seen: False" in job["log"]


def _raw_post(service: Any, head: str, chunks: Any = ()) -> bytes:
    """Send a request head (and body chunks) on a socket of its own; the response's bytes."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(service.url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


@pytest.mark.timeout(120)
def test_a_request_body_over_the_limit_is_refused_unread(batch_service: Any) -> None:
    from jobqueue.bodies import MAX_REQUEST_BYTES

    service = batch_service()
    headers = (
        "POST /jobs/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {service.token()}\r\n"
    )
    # Declared too large: answered before a byte of the body is sent.
    declared = _raw_post(service, headers + f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n")
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"larger than 64 MiB" in declared
    # Chunked, with no length given: counted as it comes.
    mib = b"x" * (1024 * 1024)
    chunk = f"{len(mib):x}\r\n".encode() + mib + b"\r\n"
    counted = _raw_post(
        service,
        headers + "Transfer-Encoding: chunked\r\n\r\n",
        [chunk] * (MAX_REQUEST_BYTES // len(mib) + 1) + [b"0\r\n\r\n"],
    )
    assert counted.startswith(b"HTTP/1.1 413"), counted[:200]
    assert _get(service, "/jobs/?collab=my-collab") == (200, [])
    # A body just under the limit is read as usual (and refused for what it says).
    job = {"code": "x" * (MAX_REQUEST_BYTES - 200), "collab": "nobody's"}
    status, answer = post(service, "/jobs/", json.dumps(job).encode())
    assert status == 422, answer


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/?hardware_platform=%00",
        "/jobs/?tags=a%00b",
        "/projects/?status=%00",
        "/jobs/?collab=%ff%fe",
        "/jobs/%00",
    ],
)
def test_a_url_holding_text_the_store_cannot_keep_is_refused(batch_service: Any, path: str) -> None:
    # PostgreSQL refused a NUL in a query string with an internal error.
    service = batch_service()
    status, answer = _get(service, path)
    assert status == 400, answer
    assert "NUL character or bytes that are not UTF-8" in answer["detail"]


def test_names_a_token_cannot_hold_are_refused_at_its_making(tmp_path: Path) -> None:
    from jobqueue.errors import BadRequestError
    from jobqueue.store import MAX_USER_CHARS, JobStore

    store = JobStore.open(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        for user, collabs in (
            ("u" * (MAX_USER_CHARS + 1), []),
            ("alice", ["c" * 201]),
            ("alice", ["a\x00b"]),
        ):
            with pytest.raises(BadRequestError, match=r"(user|collab) name"):
                store.create_token(user, collabs)
        assert store.identity(store.create_token("u" * MAX_USER_CHARS, ["c" * 200])) is not None
    finally:
        store.close()


def test_following_a_log_past_its_kept_length_shows_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Once a log is kept as its head and its end, its length stops growing: a follower
    # that printed what lay past the length it had shown went silent.
    from jobqueue import cli, runner

    monkeypatch.setattr(runner, "_MAX_LOG_CHARS", 30)
    monkeypatch.setattr(runner, "_LOG_TAIL_CHARS", 300)
    monkeypatch.setattr(cli, "_OVERLAP_CHARS", 8)
    run = runner._Run({}, Path("."))
    printed = ""
    shown = ""
    for n in range(200):
        run.append(f"line {n:03d}\n")
        printed += cli._unshown(shown, run.text())
        shown = run.text()
    # Looked at after every line, it shows every line once, in order, the middle included.
    assert printed == "".join(f"line {n:03d}\n" for n in range(200))
    assert "left out" in shown
    # One that looks too seldom says it missed some, then shows the end.
    for n in range(200, 300):
        run.append(f"line {n:03d}\n")
    jumped = cli._unshown(shown, run.text())
    assert jumped.startswith("\n[... part of the log left out ...]\n")
    assert jumped.endswith("line 299\n")


def test_the_page_of_a_job_that_is_not_there_answers_404(batch_service: Any) -> None:
    service = batch_service()
    request = urllib.request.Request(
        service.url + "/app/jobs/424242", headers={"Cookie": f"allotment_token={service.token()}"}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 404
    assert "job 424242 does not exist" in raised.value.read().decode()
