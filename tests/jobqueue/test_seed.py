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


def test_spynnakers_helper_modules_work_inside_a_job(alice: Any) -> None:
    # Each was a ModuleNotFoundError (external_devices an AttributeError).
    _, client = alice()
    script = (
        "import matplotlib.pyplot as plt\n"
        "import pyNN.spiNNaker as sim\n"
        "from pyNN.utility.plotting import Figure\n"
        "from spynnaker.pyNN.utilities import neo_convertor\n"
        "from spynnaker8.utilities import neo_convertor as old_convertor\n"
        "from spynnaker import plot_utils\n"
        "from spynnaker8.spynnaker_plotting import SpynnakerPanel\n"
        "sim.setup(timestep=1.0)\n"
        "pop = sim.Population(3, sim.IF_curr_exp(i_offset=1.0))\n"
        "pop.record(['spikes', 'v'])\n"
        "sim.run(60)\n"
        "data = pop.get_data()\n"
        "spikes = neo_convertor.convert_spikes(data)\n"
        "print('spikes', spikes.shape, old_convertor.count_spikes(data))\n"
        "plot_utils.plot_spikes(spikes)\n"
        "plt.savefig('raster.png')\n"
        "Figure(SpynnakerPanel(neo_convertor.convert_data(data, 'v'))).save('heat.png')\n"
        "try:\n"
        "    sim.external_devices.SpikeInjector\n"
        "except sim.NotSupportedError as error:\n"
        "    print('refused', error)\n"
        "sim.end()\n"
    )
    job = run_job(client, script)
    assert job["status"] == "finished", job["log"]
    assert "spikes (6, 2) 6" in job["log"]
    assert "refused external_devices.SpikeInjector is not supported" in job["log"]
    names = {Path(item["path"]).name for item in job["output_data"]["files"]}
    assert {"raster.png", "heat.png"} <= names, names
