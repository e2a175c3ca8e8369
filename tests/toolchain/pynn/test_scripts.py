"""Scripts in sPyNNaker's style, run through the backend with only the import changed."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from neo import Block

ROOT = Path(__file__).resolve().parents[3]

SIMPLE_EXAMPLE = """
import allotment.pynn as sim
import pyNN.utility.plotting as plot
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

sim.setup(timestep=1.0)
sim.set_number_of_neurons_per_core(sim.IF_curr_exp, 100)

pop_1 = sim.Population(1, sim.IF_curr_exp(), label="pop_1")
input = sim.Population(1, sim.SpikeSourceArray(spike_times=[0]), label="input")
input_proj = sim.Projection(input, pop_1, sim.OneToOneConnector(),
                            synapse_type=sim.StaticSynapse(weight=5, delay=1))
pop_1.record(["spikes", "v"])
simtime = 10
sim.run(simtime)

neo = pop_1.get_data(variables=["spikes", "v"])
spikes = neo.segments[0].spiketrains
print(spikes)
v = neo.segments[0].filter(name="v")[0]
print(v)
plot.Figure(
    plot.Panel(v, ylabel="Membrane potential (mV)", data_labels=[pop_1.label],
               yticks=True, xlim=(0, simtime)),
    plot.Panel(spikes, yticks=True, markersize=5, xlim=(0, simtime)),
    title="Simple Example",
    annotations="Simulated with {}".format(sim.name()),
)
plt.savefig("simple_example.png")
SPIKES = [float(t) for t in spikes[0].magnitude]
V = v.magnitude[:, 0].tolist()
"""


def _run_script(source: str, workdir: Path) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, str(workdir / "script.py"), "exec"), namespace)
    return namespace


def test_the_seed_documents_simple_example_runs_and_writes_its_figure(
    sim: ModuleType, workdir: Path
) -> None:
    found = _run_script(SIMPLE_EXAMPLE, workdir)
    figure = workdir / "simple_example.png"
    assert figure.stat().st_size > 10_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the spike at t = 0 arrives after the 1 ms delay; 5 nA on 1 nF lifts v by about
    # 5 * tau_syn / tau_m ... enough to cross -50 mV once, then v is reset to -65
    v = np.asarray(found["V"])
    assert v.shape == (10,)
    assert v[0] == pytest.approx(-65.0)
    assert v[1] == pytest.approx(-65.0)
    assert np.all(np.diff(v[1:7]) > 0)
    spikes = found["SPIKES"]
    assert isinstance(spikes, list)
    assert len(spikes) == 1
    assert v[int(spikes[0]) + 1] == pytest.approx(-65.0)
    assert v[int(spikes[0])] > -51.0


def test_a_script_that_never_calls_end_finishes_cleanly(workdir: Path) -> None:
    script = workdir / "no_end.py"
    script.write_text(
        "import allotment.pynn as sim\n"
        "sim.setup(timestep=1.0)\n"
        "p = sim.Population(2, sim.IF_curr_exp(i_offset=2.0), label='cells')\n"
        "p.record('spikes')\n"
        "sim.run(50)\n"
        "print('spikes', sum(len(s) for s in p.get_data().segments[0].spiketrains))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": str(ROOT), "HOME": str(workdir), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "spikes" in done.stdout
    assert "Traceback" not in done.stderr
    (run,) = (workdir / "reports").iterdir()
    assert (run / "worries.rpt").read_text().strip() == "nothing to worry about"
    assert (run / "provenance_cores.csv").is_file()


def test_run_twice_continues_as_one_long_run(sim: ModuleType) -> None:
    def build() -> object:
        sim.setup(timestep=0.1)
        cells = sim.Population(50, sim.IF_curr_exp(tau_syn_E=1.0), label="cells")
        drive = sim.Population(50, sim.SpikeSourcePoisson(rate=2000.0, seed=3), label="drive")
        sim.Projection(drive, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0))
        cells.record(["spikes", "v"])
        return cells

    cells = build()
    sim.run(100.0)
    assert sim.get_current_time() == pytest.approx(100.0)
    sim.run_until(250.0)
    split = cells.get_data().segments[0]
    cells = build()
    sim.run(250.0)
    whole = cells.get_data().segments[0]
    assert sum(len(s) for s in whole.spiketrains) > 100
    for a, b in zip(split.spiketrains, whole.spiketrains, strict=True):
        np.testing.assert_array_equal(a.magnitude, b.magnitude)
    va, vb = split.filter(name="v")[0], whole.filter(name="v")[0]
    assert va.shape == vb.shape == (2500, 50)
    np.testing.assert_array_equal(va.magnitude, vb.magnitude)


def test_a_poisson_rate_changed_between_runs_takes_effect_and_state_carries_over(
    sim: ModuleType,
) -> None:
    sim.setup(timestep=1.0)
    cells = sim.Population(100, sim.IF_curr_exp(), label="cells")
    drive = sim.Population(100, sim.SpikeSourcePoisson(rate=10.0), label="drive")
    sim.Projection(drive, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=20.0))
    cells.record("spikes")
    sim.run(1000.0)
    drive.set(rate=100.0)
    sim.run(1000.0)
    trains = cells.get_data("spikes").segments[0].spiketrains
    times = np.concatenate([s.magnitude for s in trains])
    slow, fast = int((times < 1000).sum()), int((times >= 1000).sum())
    # each input spike (20 nA on 1 nF) fires its target a few times: the output follows
    # the input rate, ten times higher in the second run
    assert slow > 500
    assert 7.0 <= fast / slow <= 13.0
    assert sim.get_current_time() == pytest.approx(2000.0)


def test_set_of_a_neuron_parameter_between_runs_changes_the_run_that_follows(
    sim: ModuleType,
) -> None:
    sim.setup(timestep=1.0)
    cells = sim.Population(3, sim.IF_curr_exp(), label="cells")
    cells.record("spikes")
    sim.run(100.0)
    cells[1:].set(i_offset=2.0)
    sim.run(100.0)
    trains = cells.get_data("spikes").segments[0].spiketrains
    assert len(trains[0]) == 0
    assert len(trains[1]) > 5
    assert float(trains[1].min()) >= 100.0


def test_reset_starts_a_new_segment_that_repeats_the_first(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    cells = sim.Population(20, sim.IF_curr_exp(), label="cells")
    drive = sim.Population(20, sim.SpikeSourcePoisson(rate=50.0), label="drive")
    sim.Projection(drive, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=20.0))
    cells.record(["spikes", "v"])
    sim.run(200.0)
    sim.reset()
    assert sim.get_current_time() == 0.0
    sim.run(200.0)
    block = cells.get_data()
    assert isinstance(block, Block)
    assert len(block.segments) == 2
    first, second = block.segments
    assert sum(len(s) for s in first.spiketrains) > 50
    for a, b in zip(first.spiketrains, second.spiketrains, strict=True):
        np.testing.assert_array_equal(a.magnitude, b.magnitude)


def test_a_synfire_chain_with_delays_longer_than_a_cores_slots(sim: ModuleType) -> None:
    # 256 neurons per core leave 32 delay slots: the 40 ms links go through delay extensions
    sim.setup(timestep=1.0)
    n, delay = 256, 40.0
    chain = [sim.Population(n, sim.IF_curr_exp(tau_syn_E=2.0), label=f"link{i}") for i in range(5)]
    stim = sim.Population(1, sim.SpikeSourceArray(spike_times=[5.0]), label="stim")
    sim.Projection(stim, chain[0], sim.AllToAllConnector(), sim.StaticSynapse(weight=15.0))
    rng = sim.NumpyRNG(seed=11)
    for a, b in itertools.pairwise(chain):
        sim.Projection(
            a,
            b,
            sim.FixedProbabilityConnector(0.1, rng=rng),
            sim.StaticSynapse(weight=1.0, delay=delay),
        )
    for pop in chain:
        pop.record("spikes")
    sim.run(250.0)
    firsts = []
    for pop in chain:
        trains = pop.get_data("spikes").segments[0].spiketrains
        times = np.concatenate([s.magnitude for s in trains])
        assert times.size >= n  # every neuron of every link fires
        firsts.append(float(times.min()))
    gaps = np.diff(firsts)
    assert np.all(gaps >= delay)
    assert np.all(gaps <= delay + 10.0)
    report = next(Path("reports").iterdir()) / "synapses.rpt"
    assert report.read_text().count("delay extension of link") == 4


def test_reports_hold_placements_routes_provenance_and_the_worries_printed_at_end(
    sim: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.setup(timestep=1.0)
    stim = sim.Population(50, sim.SpikeSourceArray(spike_times=[5.0]), label="burst")
    cells = sim.Population(10, sim.IF_curr_exp(), label="flooded")
    # 50 synchronous inputs on ring buffers scaled for one spike per step per source: fine;
    # Poisson sources sped up after the first run overflow slots scaled for their 1 Hz
    drive = sim.Population(50, sim.SpikeSourcePoisson(rate=1.0, start=0.0), label="drive")
    sim.Projection(stim, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=0.5))
    sim.Projection(drive, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=2.0))
    cells.record("spikes")
    sim.run(1.0)
    drive.set(rate=5000.0)  # the ring buffers keep the shift computed for 1 Hz
    sim.run(20.0)
    sim.end()
    (run,) = Path("reports").iterdir()
    assert "flooded IF_curr_exp\t0:10\t(0, 0)" in (run / "placements.rpt").read_text()
    assert "entries before compression" in (run / "routing_tables.rpt").read_text()
    cores = (run / "provenance_cores.csv").read_text().splitlines()
    assert cores[0].startswith("x,y,p,vertex,")
    assert any("flooded" in line for line in cores[1:])
    assert (run / "provenance_routers.csv").read_text().startswith("x,y,local_mc")
    printed = capsys.readouterr().out
    assert "population 'flooded'" in printed
    assert "ring-buffer saturations" in printed
    assert "ring-buffer saturations" in (run / "worries.rpt").read_text()


def test_poisson_sources_the_chip_draws_nothing_for_are_a_worry(sim: ModuleType) -> None:
    # From about 10.4 to 20 spikes a step the 7.4.1 core's fast method draws no spike at
    # all (exp(-lambda) is 0 in 15 bits): the input vanished and the worries said nothing.
    sim.setup(timestep=1.0)
    sources = {
        label: sim.Population(3, sim.SpikeSourcePoisson(rate=rate), label=label)
        for label, rate in (("silent", 12000.0), ("slow", 9000.0), ("faster", 25000.0))
    }
    cells = {}
    for label, source in sources.items():
        cells[label] = sim.Population(1, sim.IF_curr_exp(), label=f"{label} cell")
        cells[label].record("v")
        sim.Projection(
            source, cells[label], sim.AllToAllConnector(), sim.StaticSynapse(weight=0.01)
        )
    sim.run(5.0)
    moved = {
        label: bool((cell.get_data().segments[0].filter(name="v")[0].magnitude != -65.0).any())
        for label, cell in cells.items()
    }
    sim.end()
    assert moved == {"silent": False, "slow": True, "faster": True}
    (run,) = Path("reports").iterdir()
    said = (run / "worries.rpt").read_text()
    assert "population 'silent': 3 Poisson sources send nothing" in said
    assert "'slow'" not in said
    assert "'faster'" not in said
