"""The PyNN backend in server mode against a real allotment server process.

A script names the server in ``spynnaker.cfg`` as sPyNNaker users do; the backend asks for
boards sized from the mapped network, runs through the dispatch commands and frees the job
at ``end()``. Its spikes equal virtual mode's bit for bit. Parameters changed between runs
carry the running state over on the server too (``load_image`` with ``keep_state``). A
lost server and a destroyed job raise a clear ``RemoteError``, never hang.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import numpy as np
import pytest

from protocol.client import AllotmentClient
from tests.e2e.conftest import SERVER_TOML, ServerProcess, write_server_config
from toolchain.errors import RemoteError

DISPATCH_TOML = SERVER_TOML + "\n[dispatch]\nworkers = 1\nresults_grace_s = 0.0\n"


def _start(where: Path) -> ServerProcess:
    process = ServerProcess(
        write_server_config(where, DISPATCH_TOML), f"sqlite:///{where / 'a.db'}", where
    )
    return process.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One dispatch server for the module's scripts."""
    process = _start(tmp_path_factory.mktemp("pynn-server"))
    yield process
    process.stop()


@pytest.fixture
def script_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _configure(where: Path, server: ServerProcess) -> None:
    (where / "spynnaker.cfg").write_text(
        f"[Machine]\nspalloc_server = {server.host}\nspalloc_port = {server.port}\n"
        "spalloc_user = pynn-test\n"
    )


def _script(sim: ModuleType) -> tuple[list[list[float]], np.ndarray]:
    """A script as sPyNNaker users write it: run, run again, read back."""
    cells = sim.Population(30, sim.IF_curr_exp(), label="cells")
    drive = sim.Population(30, sim.SpikeSourcePoisson(rate=80.0, seed=5), label="drive")
    sim.Projection(drive, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=15.0))
    cells.record(["spikes", "v"])
    sim.run(300.0)
    sim.run(200.0)
    seg = cells.get_data().segments[0]
    return [s.magnitude.tolist() for s in seg.spiketrains], seg.filter(name="v")[0].magnitude


def _changing_script(sim: ModuleType) -> tuple[list[list[list[float]]], list[np.ndarray]]:
    """Run; change a neuron parameter, a Poisson rate, spike times and what is recorded; run
    on; reset; run."""
    cells = sim.Population(30, sim.IF_curr_exp(), label="cells")
    steady = sim.Population(5, sim.IF_curr_exp(i_offset=2.0), label="steady")
    drive = sim.Population(30, sim.SpikeSourcePoisson(rate=20.0, seed=5), label="drive")
    kicks = sim.Population(3, sim.SpikeSourceArray(spike_times=[5.0, 60.0]), label="kicks")
    sim.Projection(drive, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=15.0))
    sim.Projection(kicks, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=4.0))
    cells.record(["spikes", "v"])
    sim.run(100.0)
    cells[:10].set(i_offset=1.5)
    drive.set(rate=90.0)
    kicks.set(spike_times=[5.0, 150.0, 170.0])
    steady.record(["spikes", "v"])
    sim.run(100.0)
    cells.set(i_offset=0.0)
    sim.run(50.0)
    sim.reset()
    drive.set(rate=20.0)
    sim.run(60.0)
    segments = [*cells.get_data().segments, *steady.get_data().segments]
    spikes = [[s.magnitude.tolist() for s in seg.spiketrains] for seg in segments]
    return spikes, [seg.filter(name="v")[0].magnitude for seg in segments]


@pytest.mark.timeout(240)
def test_parameters_changed_between_runs_carry_the_state_on_the_server_as_in_virtual_mode(
    server: ServerProcess, script_dir: Path
) -> None:
    import allotment.pynn as sim

    sim.setup(timestep=1.0)
    virtual_spikes, virtual_v = _changing_script(sim)
    sim.end()

    _configure(script_dir, server)
    sim.setup(timestep=1.0)
    spikes, v = _changing_script(sim)
    sim.end()
    assert len(spikes) == 4  # each population's segments before reset() and after
    first, unchanged = spikes[0], spikes[1]
    assert sum(len(s) for s in spikes[2]) > 0, "recorded from the second run on"
    assert sum(len(s) for s in first) > 2 * sum(len(s) for s in unchanged), "the changes show"
    assert spikes == virtual_spikes
    for mine, theirs in zip(v, virtual_v, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def _learning_script(sim: ModuleType) -> tuple[list[list[float]], np.ndarray, np.ndarray]:
    """STDP onto cells whose offset and drive change between runs: the learning goes on."""
    pre = sim.Population(20, sim.SpikeSourcePoisson(rate=30.0, seed=2), label="pre")
    post = sim.Population(10, sim.IF_curr_exp(i_offset=0.5), label="post")
    rule = sim.STDPMechanism(
        timing_dependence=sim.SpikePairRule(
            tau_plus=20.0, tau_minus=20.0, A_plus=0.05, A_minus=0.05
        ),
        weight_dependence=sim.AdditiveWeightDependence(w_min=0.0, w_max=5.0),
        weight=2.0,
        delay=1.0,
    )
    projection = sim.Projection(pre, post, sim.AllToAllConnector(), rule)
    post.record("spikes")
    sim.run(100.0)
    learned = projection.get("weight", format="array")
    post.set(i_offset=1.2)
    pre.set(rate=60.0)
    sim.run(100.0)
    spikes = [s.magnitude.tolist() for s in post.get_data().segments[0].spiketrains]
    return spikes, learned, projection.get("weight", format="array")


@pytest.mark.timeout(240)
def test_plastic_weights_learn_on_across_a_parameter_change_on_the_server(
    server: ServerProcess, script_dir: Path
) -> None:
    import allotment.pynn as sim

    sim.setup(timestep=1.0)
    virtual_spikes, virtual_first, virtual_last = _learning_script(sim)
    sim.end()

    _configure(script_dir, server)
    sim.setup(timestep=1.0)
    spikes, first, last = _learning_script(sim)
    sim.end()
    assert sum(len(s) for s in spikes) > 0
    assert not np.array_equal(first, last), "the second run learned on"
    assert spikes == virtual_spikes
    np.testing.assert_array_equal(first, virtual_first)
    np.testing.assert_array_equal(last, virtual_last)


async def _job_state(server: ServerProcess, job_id: int) -> int:
    client = await AllotmentClient.connect(server.host, server.port, timeout_s=30.0)
    try:
        return (await client.get_job_state(job_id)).state
    finally:
        await client.aclose()


async def _destroy(server: ServerProcess, job_id: int) -> None:
    client = await AllotmentClient.connect(server.host, server.port, timeout_s=30.0)
    try:
        await client.destroy_job(job_id, "operator says no")
    finally:
        await client.aclose()


@pytest.mark.timeout(240)
def test_a_script_runs_on_the_server_as_in_virtual_mode_and_frees_its_job(
    server: ServerProcess, script_dir: Path
) -> None:
    import allotment.pynn as sim
    from toolchain.pynn import simulator

    sim.setup(timestep=1.0)
    virtual_spikes, virtual_v = _script(sim)
    sim.end()

    _configure(script_dir, server)
    sim.setup(timestep=1.0)
    assert f"server {server.host}:{server.port}" in sim.name()
    spikes, v = _script(sim)
    session = simulator.state.session
    assert session is not None
    job_id = session.machine.job_id  # type: ignore[attr-defined]
    assert anyio.run(_job_state, server, job_id) == 3  # ready while the script runs
    sim.end()
    assert sum(len(s) for s in spikes) > 50
    assert spikes == virtual_spikes
    np.testing.assert_array_equal(v, virtual_v)
    assert anyio.run(_job_state, server, job_id) == 4  # destroyed at end()


@pytest.mark.timeout(240)
def test_a_destroyed_job_is_a_clear_error(server: ServerProcess, script_dir: Path) -> None:
    import allotment.pynn as sim
    from toolchain.pynn import simulator

    _configure(script_dir, server)
    sim.setup(timestep=1.0)
    cells = sim.Population(5, sim.IF_curr_exp(i_offset=2.0), label="cells")
    cells.record("spikes")
    sim.run(50.0)
    session = simulator.state.session
    assert session is not None
    anyio.run(_destroy, server, session.machine.job_id)  # type: ignore[attr-defined]
    with pytest.raises(RemoteError, match=str(server.port)):
        sim.run(50.0)
    sim.end()


@pytest.mark.timeout(240)
def test_a_lost_server_is_a_clear_error_not_a_hang(tmp_path: Path, script_dir: Path) -> None:
    import allotment.pynn as sim

    lonely = _start(tmp_path / "lonely")
    try:
        _configure(script_dir, lonely)
        sim.setup(timestep=1.0)
        cells = sim.Population(5, sim.IF_curr_exp(i_offset=2.0), label="cells")
        cells.record("spikes")
        sim.run(50.0)
    finally:
        lonely.stop(signal.SIGKILL)
    with pytest.raises(RemoteError, match=str(lonely.port)):
        sim.run(50.0)
    sim.end()


async def _standby(server: ServerProcess, owner: str, n_boards: int = 1) -> int:
    """A job made the way a batch runner makes its standby: allocated, powered, waited on."""
    client = await AllotmentClient.connect(server.host, server.port, timeout_s=30.0)
    try:
        dims = () if n_boards == 1 else (n_boards,)
        job_id = await client.create_job(*dims, owner=owner, keepalive_s=60.0)
        await client.notify_job(job_id)
        while (await client.get_job_state(job_id)).state != 3:
            await client.receive_notification(timeout_s=30.0)
        return job_id
    finally:
        await client.aclose()


def _hand_over(where: Path, server: ServerProcess, job_id: int, owner: str) -> None:
    _configure(where, server)
    with (where / "spynnaker.cfg").open("a") as cfg:
        cfg.write(f"spalloc_job = {job_id}\nspalloc_job_owner = {owner}\n")


def _small_run(sim: ModuleType) -> int:
    """Map and run a small network; the server job it ran on."""
    from toolchain.pynn import simulator

    sim.setup(timestep=1.0)
    cells = sim.Population(5, sim.IF_curr_exp(i_offset=2.0), label="cells")
    cells.record("spikes")
    sim.run(50.0)
    assert sum(len(s) for s in cells.get_data().segments[0].spiketrains) > 0
    session = simulator.state.session
    assert session is not None
    job_id: int = session.machine.job_id  # type: ignore[attr-defined]
    sim.end()
    return job_id


@pytest.mark.timeout(240)
def test_a_job_handed_over_in_spynnaker_cfg_is_the_one_the_script_runs_on(
    server: ServerProcess, script_dir: Path
) -> None:
    import allotment.pynn as sim

    standby = anyio.run(_standby, server, "standby-owner")
    _hand_over(script_dir, server, standby, "standby-owner")
    assert _small_run(sim) == standby
    assert anyio.run(_job_state, server, standby) == 4  # destroyed at end(), as its own


@pytest.mark.timeout(240)
def test_a_handed_over_job_that_is_gone_or_too_small_is_replaced_by_a_new_one(
    server: ServerProcess, script_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import allotment.pynn as sim

    gone = anyio.run(_standby, server, "standby-owner")
    anyio.run(_destroy, server, gone)
    _hand_over(script_dir, server, gone, "standby-owner")
    ran_on = _small_run(sim)
    assert ran_on != gone
    assert anyio.run(_job_state, server, ran_on) == 4
    assert f"not using job {gone} handed over" in capfd.readouterr().err

    small = anyio.run(_standby, server, "standby-owner")
    _hand_over(script_dir, server, small, "standby-owner")
    sim.setup(timestep=1.0, n_boards_required=2)
    sim.Population(5, sim.IF_curr_exp(i_offset=2.0), label="cells")
    sim.run(10.0)
    from toolchain.pynn import simulator

    assert simulator.state.session is not None
    assert simulator.state.session.machine.job_id != small  # type: ignore[attr-defined]
    sim.end()
    assert anyio.run(_job_state, server, small) == 4
    assert (
        f"job {small} handed over has 1 of the 2 boards the network needs" in capfd.readouterr().err
    )
