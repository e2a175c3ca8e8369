"""The real `nmpi` client (hbp-neuromorphic-platform 0.11.2) against a running batch service."""

from __future__ import annotations

import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.jobqueue.conftest import run_job

PLOT_SCRIPT = """\
import os, sys
import matplotlib
import matplotlib.pyplot as plt
print("args", sys.argv[1:], "colour", os.environ["colour"], "n", os.environ["n"])
print("backend", matplotlib.get_backend())
plt.plot([0, 1, 4, 9])
plt.savefig("simple_example.png")
os.makedirs("reports/run_1", exist_ok=True)
with open("reports/run_1/provenance.txt", "w") as f:
    f.write("boards: 0\\n")
"""


def test_an_inline_script_finishes_and_its_outputs_download(alice: Any, tmp_path: Path) -> None:
    _, client = alice()
    job = run_job(client, PLOT_SCRIPT, config={"colour": "red", "n": 3}, tags=["test", "simple"])
    assert job["status"] == "finished", job["log"]
    assert "args ['spiNNaker'] colour red n 3" in job["log"]
    assert "backend agg" in job["log"].lower()
    assert job["tags"] == ["test", "simple"]
    assert job["timestamp_completion"].endswith("Z")
    assert job["resource_usage"] == {"value": 0.0, "units": "core-hours"}
    files = client.download_data(job, local_dir=str(tmp_path / "out"))
    names = sorted(Path(f).name for f in files)
    assert names == sorted(["simple_example.png", "reports.zip", f"output_{job['id']}.txt"])
    where = tmp_path / "out" / "my-collab" / str(job["id"])
    assert (where / "simple_example.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with zipfile.ZipFile(where / "reports.zip") as archive:
        assert archive.namelist() == ["reports/run_1/provenance.txt"]
    assert "args ['spiNNaker']" in (where / f"output_{job['id']}.txt").read_text()
    for item in job["output_data"]["files"]:
        assert item["size"] == (where / Path(item["path"]).name).stat().st_size
        assert len(item["hash"]) == 40


def test_every_field_of_a_job_is_present(alice: Any) -> None:
    _, client = alice()
    uri = client.submit_job(source="print('hi')", platform="SpiNNaker", collab_id="my-collab")
    assert uri.startswith("/jobs/")
    job = client.get_job(uri)
    assert set(job) >= {
        "code", "command", "collab", "input_data", "hardware_platform", "hardware_config",
        "tags", "id", "user_id", "status", "timestamp_submission", "resource_uri",
        "output_data", "provenance", "timestamp_completion", "resource_usage", "comments",
        "log",
    }  # fmt: skip
    assert job["user_id"] == "alice"
    assert job["resource_uri"] == uri


def test_a_failing_script_ends_as_error_with_its_traceback(alice: Any) -> None:
    _, client = alice()
    job = run_job(client, "import os\nprint('before')\n1 / 0\n")
    assert job["status"] == "error"
    log = job["log"]
    assert log.index("before") < log.index("Traceback") < log.index("ZeroDivisionError")
    assert "Python exited with a non-zero code (1)" in log


def test_a_script_that_loops_forever_ends_as_error_at_its_timeout(alice: Any) -> None:
    _, client = alice()
    job = run_job(
        client,
        "import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.01)\n",
        config={"timeout": 0.0005},  # hours: 1.8 s
    )
    assert job["status"] == "error"
    assert "looping" in job["log"]
    assert "ran past its time limit of 0.0005 hours" in job["log"]


def test_a_job_cannot_read_another_jobs_files_or_the_database(alice: Any) -> None:
    service, client = alice()
    first = run_job(client, "open('secret.txt', 'w').write('mine')\n")
    assert first["status"] == "finished"
    other = service.store.engine.url.database
    jobs_dir = Path(service.cwd) / "jobs"
    spy = f"""\
import os
for path in [{str(jobs_dir / str(first["id"]) / "secret.txt")!r}, {other!r}]:
    try:
        open(path, "rb").read()
        print("READ", path)
    except OSError as error:
        print("REFUSED", type(error).__name__, path)
print("listing", sorted(os.listdir({str(jobs_dir)!r})))
"""
    job = run_job(client, spy)
    assert job["status"] == "finished", job["log"]
    assert "READ" not in job["log"]
    assert "REFUSED FileNotFoundError" in job["log"]  # the other job's file does not exist
    assert f"REFUSED PermissionError {other}" in job["log"]
    assert f"listing ['{job['id']}']" in job["log"]


def test_a_bad_token_gets_the_clients_errors(
    batch_service: Any, nmpi_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import getpass

    service = batch_service()
    token = service.token()
    client = nmpi_client(service, token)
    assert service.store.revoke_token(token)
    with pytest.raises(Exception, match="Error 401: Token may have expired"):
        client.submit_job(source="print(1)", platform="SpiNNaker", collab_id="my-collab")

    # At construction the client asks for a password when userinfo says invalid_token.
    def no_terminal(*_args: Any, **_kwargs: Any) -> str:
        raise EOFError("no terminal")

    monkeypatch.setattr(getpass, "getpass", no_terminal)
    with pytest.raises(EOFError):
        nmpi_client(service, "not-a-token")


def test_another_collabs_jobs_are_invisible(batch_service: Any, nmpi_client: Any) -> None:
    service = batch_service()
    alices = nmpi_client(service, service.token("alice", ("my-collab",)))
    bob = nmpi_client(service, service.token("bob", ("bobs-collab",)))
    uri = alices.submit_job(source="print(1)", platform="SpiNNaker", collab_id="my-collab")
    with pytest.raises(Exception, match="No such job"):
        bob.get_job(uri)
    with pytest.raises(Exception, match="Error 404: You do not have access to this collab"):
        bob.submit_job(source="print(1)", platform="SpiNNaker", collab_id="my-collab")
    with pytest.raises(Exception, match="Error 404: You do not have access to this collab"):
        bob.completed_jobs("my-collab")
    assert set(bob.my_collabs()) == {"bobs-collab", "private-bob"}
    own = bob.submit_job(source="print(1)", platform="SpiNNaker", collab_id="private-bob")
    assert bob.get_job(own)["collab"] == "private-bob"


def test_an_exhausted_quota_refuses_submission(alice: Any) -> None:
    service, client = alice()
    client.submit_job(source="print(1)", platform="SpiNNaker", collab_id="my-collab")
    quotas = client.quotas("my-collab")
    assert [(q["limit"], q["units"], q["platform"]) for q in quotas] == [
        (5000.0, "core-hours", "SpiNNaker")
    ]
    service.store.set_quota("my-collab", "SpiNNaker", 0.0)
    with pytest.raises(Exception, match="Error 403: collab 'my-collab' has no quota left"):
        client.submit_job(source="print(1)", platform="SpiNNaker", collab_id="my-collab")


def test_projects_comments_and_tags(alice: Any) -> None:
    _, client = alice()
    uri = client.create_resource_request("More time", "my-collab", "for a bigger network")
    assert uri.startswith("/projects/")
    assert client.get_resource_request(uri)["status"] == "in preparation"
    assert client.get_resource_request(uri)["submission_date"] is None
    client.edit_resource_request(uri, title="Much more time", submit=True)
    project = client.get_resource_request(uri)
    assert (project["title"], project["status"]) == ("Much more time", "under review")
    assert project["submission_date"] is not None  # dated when submitted for review
    assert [p["title"] for p in client.resource_requests("my-collab")] == ["Much more time"]
    job = run_job(client, "print(1)")
    comment = client.submit_comment(job["id"], "worked first time")
    assert comment["content"] == "worked first time"
    assert comment["resource_uri"] == f"/jobs/{job['id']}/comments/{comment['id']}"
    assert client.add_tags(job["id"], ["alpha", "beta"]) == ["alpha", "beta"]
    client.remove_tags(job["id"], ["alpha"])
    again = client.get_job(job["id"])
    assert again["tags"] == ["beta"]
    assert [c["content"] for c in again["comments"]] == ["worked first time"]
    assert [j for j in client.completed_jobs("my-collab")] == [f"/jobs/{job['id']}"]
    assert client.queued_jobs() == []


def test_the_job_list_filters_by_date_range(alice: Any) -> None:
    service, client = alice()
    job = run_job(client, "print(1)")
    today = datetime.now(UTC).date()
    day = timedelta(days=1)

    def listed(start: date, end: date) -> list[int]:
        url = (
            f"{service.url}/jobs/?collab=my-collab"
            f"&date_range_start={start.isoformat()}&date_range_end={end.isoformat()}"
        )
        return [found["id"] for found in client._query(url)]

    assert listed(today, today) == [job["id"]]
    assert listed(today - 2 * day, today - day) == []
    assert listed(today + day, today + 2 * day) == []
    bad = f"{service.url}/jobs/?collab=my-collab&date_range_start=yesterday"
    with pytest.raises(Exception, match="Error 400: 'yesterday' is not a date"):
        client._query(bad)
