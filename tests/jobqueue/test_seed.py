"""The seed's simple example, as a portal user submits it, through the real client."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.jobqueue.conftest import run_job

SEED = Path(__file__).resolve().parents[2] / "bench" / "seed_simple_example.py"


def _check_outputs(client: Any, job: dict[str, Any], tmp_path: Path) -> None:
    assert job["status"] == "finished", job["log"]
    client.download_data(job, local_dir=str(tmp_path / "out"))
    where = tmp_path / "out" / "my-collab" / str(job["id"])
    assert (where / "simple_example.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with zipfile.ZipFile(where / "reports.zip") as archive:
        assert archive.namelist()
    assert (where / f"output_{job['id']}.txt").read_bytes().decode() == job["log"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_seeds_simple_example_runs_virtually_with_its_figure_and_reports(
    full_service: Any, nmpi_client: Any, tmp_path: Path
) -> None:
    service = full_service("--batch-virtual", is_warming_up=True)
    client = nmpi_client(service, service.token())
    job = run_job(client, SEED.read_text())
    _check_outputs(client, job, tmp_path)
    assert job["resource_usage"]["value"] == 0.0  # no boards were used


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_seeds_simple_example_runs_on_boards_of_the_allocation_server(
    full_service: Any, nmpi_client: Any, tmp_path: Path
) -> None:
    service = full_service(is_warming_up=True)
    client = nmpi_client(service, service.token())
    job = run_job(client, SEED.read_text())
    _check_outputs(client, job, tmp_path)
    assert job["resource_usage"]["value"] > 0


def test_spynnakers_import_names_mean_allotments_backend_inside_a_job(alice: Any) -> None:
    _, client = alice()
    script = (
        "import allotment.pynn\n"
        "import pyNN.spiNNaker as a\n"
        "import spynnaker8 as b\n"
        "import spynnaker.pyNN as c\n"
        "print('same', all(m.setup is allotment.pynn.setup for m in (a, b, c)))\n"
        "print('population', b.Population is allotment.pynn.Population)\n"
    )
    job = run_job(client, script)
    assert job["status"] == "finished", job["log"]
    assert "same True" in job["log"]
    assert "population True" in job["log"]
