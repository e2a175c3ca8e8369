"""The runner: limits, clean ends, concurrency and queue order, usage, and recovery."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.jobqueue.conftest import run_job

ALLOCATING_SCRIPT = """\
import configparser, time
from spalloc_client import Job
machine = configparser.ConfigParser()
machine.read("spynnaker.cfg")
m = machine["Machine"]
print("owner", m["spalloc_user"], flush=True)
where = dict(hostname=m["spalloc_server"], port=int(m["spalloc_port"]))
with Job(1, owner=m["spalloc_user"], **where) as job:
    job.wait_until_ready(timeout=30)
    print("boards", job.width, job.height, flush=True)
    time.sleep(3)
"""


def _no_process_with(marker: str) -> bool:
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            return False
    return True


def test_nothing_the_script_started_outlives_the_job(alice: Any) -> None:
    _, client = alice()
    marker = f"marker-{uuid.uuid4().hex}"
    script = f"""\
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"],
                 start_new_session=True)
print("left a child behind")
"""
    job = run_job(client, script)
    assert job["status"] == "finished", job["log"]
    deadline = time.monotonic() + 5
    while not _no_process_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _no_process_with(marker)


def test_removing_a_running_job_stops_it(batch_service: Any, nmpi_client: Any) -> None:
    service = batch_service()
    token = service.token()
    client = nmpi_client(service, token)
    marker = f"marker-{uuid.uuid4().hex}"
    script = f"import time\nprint('{marker}', flush=True)\ntime.sleep(600)\n"
    uri = client.submit_job(source=script, platform="SpiNNaker", collab_id="my-collab")
    job_id = int(uri.rsplit("/", 1)[1])
    service.wait_for(job_id, ("running",))
    answer = requests.delete(
        f"{service.url}{uri}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not service.store.job(job_id)["timestamp_completion"]:
        time.sleep(0.1)
    job = service.store.job(job_id)
    assert job["status"] == "removed"
    assert "the job was removed while it ran" in job["log"]
    assert _no_process_with(marker)
    with pytest.raises(Exception, match="No such job"):
        client.get_job(uri)


def test_jobs_beyond_the_runners_wait_in_order_with_their_position(alice: Any) -> None:
    service, client = alice(runners=1)
    uris = [
        client.submit_job(
            source=f"import time\ntime.sleep({1.5 if i == 0 else 0})\nprint('job {i}')\n",
            platform="SpiNNaker",
            collab_id="my-collab",
        )
        for i in range(3)
    ]
    first = int(uris[0].rsplit("/", 1)[1])
    service.wait_for(first, ("running",))
    positions = [client.get_job(uri)["queue_position"] for uri in uris]
    assert positions == [None, 1, 2]
    queued = client.queued_jobs()
    assert set(queued) >= set(uris[1:])
    ended = [service.wait_for(int(u.rsplit("/", 1)[1]), ("finished",)) for u in uris]
    completions = [j["timestamp_completion"] for j in ended]
    assert completions == sorted(completions)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_twenty_jobs_submitted_at_once_all_finish(alice: Any) -> None:
    service, client = alice(runners=4)
    uris = [
        client.submit_job(
            source=f"print('job', {i})\n", platform="SpiNNaker", collab_id="my-collab"
        )
        for i in range(20)
    ]
    for i, uri in enumerate(uris):
        job = service.wait_for(int(uri.rsplit("/", 1)[1]), ("finished", "error"), timeout_s=120)
        assert job["status"] == "finished", job["log"]
        assert f"job {i}" in job["log"]
    assert len(client.completed_jobs("my-collab")) == 20


@pytest.mark.timeout(120)
def test_usage_is_charged_from_the_allocation_servers_records(
    full_service: Any, nmpi_client: Any
) -> None:
    service = full_service()
    client = nmpi_client(service, service.token())
    job = run_job(client, ALLOCATING_SCRIPT)
    assert job["status"] == "finished", job["log"]
    assert f"owner alice nmpi-job-{job['id']}" in job["log"]
    used = job["resource_usage"]["value"]
    # one board for about 3 s: 3 x 768 / 3600 = 0.64 core-hours (polled once a second)
    assert 0.3 < used < 2.0, job["provenance"]
    assert client.quotas("my-collab")[0]["usage"] == pytest.approx(used)


@pytest.mark.timeout(120)
def test_a_killed_service_comes_back_with_every_job(alice: Any, batch_service: Any) -> None:
    service, client = alice(runners=1)
    done = run_job(client, "print('done')")
    marker = f"marker-{uuid.uuid4().hex}"
    running = client.submit_job(
        source=f"import time\nprint('{marker}', flush=True)\ntime.sleep(600)\n",
        platform="SpiNNaker",
        collab_id="my-collab",
    )
    waiting = client.submit_job(
        source="print('after the crash')", platform="SpiNNaker", collab_id="my-collab"
    )
    running_id = int(running.rsplit("/", 1)[1])
    service.wait_for(running_id, ("running",))
    deadline = time.monotonic() + 10
    while marker not in service.store.job(running_id)["log"] and time.monotonic() < deadline:
        time.sleep(0.1)
    service.kill()
    restarted = batch_service(runners=1)
    lost = restarted.wait_for(running_id, ("error",), timeout_s=30)
    assert marker in lost["log"]
    assert "the runner running this job stopped (lost)" in lost["log"]
    after = restarted.wait_for(int(waiting.rsplit("/", 1)[1]), ("finished",))
    assert "after the crash" in after["log"]
    assert restarted.store.job(done["id"])["status"] == "finished"
    assert _no_process_with(marker)


@pytest.mark.timeout(120)
def test_a_job_asking_for_more_time_gets_as_much_cpu_time(alice: Any) -> None:
    # Its CPU time was capped by the runner's default time limit, whatever it asked for:
    # killed as "more than its CPU time limit" long before its own time limit.
    _, client = alice("--job-timeout-h", "0.0006")  # about 2 s, so 2 s of CPU time
    burn = (
        "import time\n"
        "while time.process_time() < 4.0:\n"
        "    pass\n"
        "print('burnt', round(time.process_time(), 1))\n"
    )
    job = run_job(client, burn, config={"timeout": 0.01})  # 36 s
    assert job["status"] == "finished", job["log"]
    assert "burnt 4.0" in job["log"]


@pytest.mark.timeout(180)
def test_a_batch_service_that_dies_is_started_again(full_service: Any, nmpi_client: Any) -> None:
    # `allotment serve` went on without it, saying nothing: the batch port refused
    # connections until someone restarted the whole server.
    service = full_service()
    client = nmpi_client(service, service.token())
    assert service.process is not None
    (child,) = [
        p
        for p in psutil.Process(service.process.pid).children()
        if "jobqueue" in " ".join(p.cmdline())
    ]
    child.kill()
    deadline = time.monotonic() + 60
    while not any("the batch service is running again" in line for line in service.output):
        assert time.monotonic() < deadline, "".join(service.output)
        time.sleep(0.1)
    assert any(
        f"the batch service (pid {child.pid}) exited with status -9; starting it again in 1 s"
        in line
        for line in service.output
    ), "".join(service.output)
    job = run_job(client, "print('after the restart')")
    assert job["status"] == "finished", job["log"]
    assert "after the restart" in job["log"]


def test_setup_keys_of_the_portal_are_said_not_acted_on(alice: Any) -> None:
    # They became environment variables and nothing else, without a word: a job then
    # failed on the module it had asked to be installed, with no hint why.
    _, client = alice()
    config = {"extra_pip_installs": ["elephant"], "spynnaker_version": "7.0.0"}
    job = run_job(client, "print('ran')", config=config)
    assert job["status"] == "finished", job["log"]
    assert (
        "allotment: hardware_config spynnaker_version, extra_pip_installs not acted on"
        in job["log"]
    )


def test_a_long_log_is_rewritten_less_often_than_a_short_one() -> None:
    # Every half second the whole log was written again: a job printing 10 MB made its
    # service write gigabytes in half a minute.
    from jobqueue.runner import Runner, _Run

    run = _Run({"id": 1}, Path("unused"))
    run.append("x" * 100)
    assert Runner._is_log_due(run, written=-1, logged=time.monotonic() - 0.5)
    assert not Runner._is_log_due(run, written=run.n_chars, logged=0.0)  # nothing new
    run.append("y" * 5_000_000)
    assert not Runner._is_log_due(run, written=100, logged=time.monotonic() - 0.5)
    assert Runner._is_log_due(run, written=100, logged=time.monotonic() - 5.1)


@pytest.mark.timeout(120)
def test_a_job_making_files_without_end_is_stopped(alice: Any) -> None:
    # Empty files pass the byte limit: 100,000 of them cost the runner a core walking them
    # at every heartbeat, the host its inodes and the job record 100,000 outputs.
    _, client = alice()
    script = (
        "import os, time\n"
        "os.mkdir('many')\n"
        "for n in range(30000):\n"
        "    open(f'many/{n}', 'w').close()\n"
        "time.sleep(60)\n"
    )
    job = run_job(client, script)
    assert job["status"] == "error"
    assert "the job made more than its limit of 20000 files and folders" in job["log"]
    assert len(job["output_data"]["files"]) <= 20001  # (the log besides)
