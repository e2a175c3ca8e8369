"""The backend against pyNN.nest (NEST 3.10) on the same PyNN scripts.

NEST runs on its grid (``spike_precision="on_grid"``) so both simulators step alike.
SpiNNaker stamps a spike with the start of the step that emitted it, NEST with the end,
so deterministic single-neuron scripts agree within one time step. Random networks agree
in their mean rates (within 10 %). Scripts with a spike at t = 0, which NEST cannot
load, are held against the chip's arithmetic instead (sPyNNaker's discretisation: the
synaptic current is held over a step and an input is scaled by tau/dt (1 - exp(-dt/tau))).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = {"deterministic": "_deterministic", "balanced": "_balanced"}


def _in_nest(scenario: str, *args: Any, **setup: Any) -> Any:
    """Run a scenario of this module on pyNN.nest in a process of its own.

    NEST's OpenMP runtime and numba's threads crash one process that loads both, so NEST
    runs apart and answers in JSON.
    """
    code = (
        "import json, sys, pyNN.nest as sim\n"
        "from tests.toolchain.pynn import test_against_nest as t\n"
        f"out = getattr(t, {SCENARIOS[scenario]!r})(sim, *{args!r}, **{setup!r})\n"
        "print('RESULT ' + json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


def test_nest_is_there() -> None:
    # the comparisons need the real peer: a missing wheel is a failure, not a skip
    assert importlib.util.find_spec("nest") is not None


def _deterministic(sim: ModuleType, dt: float, **setup: Any) -> list[list[float]]:
    sim.setup(timestep=dt, min_delay=dt, **setup)
    cells = sim.Population(
        3, sim.IF_curr_exp(i_offset=[0.0, 1.0, 0.5], tau_refrac=2.0), label="cells"
    )
    stim = sim.Population(
        1,
        sim.SpikeSourceArray(spike_times=[2.0, 3.0, 5.0, 7.0, 30.0, 31, 32, 33, 60]),
        label="stim",
    )
    sim.Projection(stim, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=4.0, delay=1.0))
    sim.Projection(
        stim,
        cells,
        sim.AllToAllConnector(),
        sim.StaticSynapse(weight=-1.0, delay=3.0),
        receptor_type="inhibitory",
    )
    cells.record("spikes")
    sim.run(100.0)
    trains = [s.magnitude.tolist() for s in cells.get_data().segments[0].spiketrains]
    sim.end()
    return trains


@pytest.mark.parametrize("dt", [1.0, 0.1])
def test_single_neuron_spike_times_match_nest_within_one_step(sim: ModuleType, dt: float) -> None:
    ours = _deterministic(sim, dt)
    theirs = _in_nest("deterministic", dt, spike_precision="on_grid")
    assert sum(len(t) for t in ours) >= 15
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b)
        np.testing.assert_allclose(a, b, atol=dt + 1e-9)


def _reference_lif(
    n_steps: int,
    dt: float,
    arrivals: dict[int, float],
    *,
    tau_m: float = 20.0,
    cm: float = 1.0,
    tau_syn: float = 5.0,
    v_rest: float = -65.0,
    v_thresh: float = -50.0,
    v_reset: float = -65.0,
    refrac_steps: int = 1,
) -> tuple[list[float], list[float]]:
    """sPyNNaker's IF_curr_exp step, in floating point: the oracle of the chip model.

    In step t the inputs arriving in t join the current, v is sampled (its value at the
    start of the step), v integrates with the current held over the step, the current
    decays, and a neuron at threshold spikes at t.
    """
    p22 = math.exp(-dt / tau_m)
    decay = math.exp(-dt / tau_syn)
    init = tau_syn / dt * (1.0 - decay)
    v, isyn, refractory = v_rest, 0.0, 0
    trace, spikes = [], []
    for step in range(n_steps):
        isyn += arrivals.get(step, 0.0) * init
        trace.append(v)
        if refractory > 0:
            refractory -= 1
        else:
            v = v_rest + (v - v_rest) * p22 + isyn * tau_m / cm * (1.0 - p22)
        isyn *= decay
        if v >= v_thresh:
            spikes.append(step * dt)
            v, refractory = v_reset, refrac_steps
    return trace, spikes


def test_the_simple_example_follows_the_chips_arithmetic(sim: ModuleType) -> None:
    # the seed's example: its spike at t = 0 is one NEST drops, so the oracle is the model
    sim.setup(timestep=1.0)
    cell = sim.Population(1, sim.IF_curr_exp(), label="pop_1")
    stim = sim.Population(1, sim.SpikeSourceArray(spike_times=[0, 12]), label="input")
    sim.Projection(stim, cell, sim.OneToOneConnector(), sim.StaticSynapse(weight=5, delay=1))
    cell.record(["spikes", "v"])
    sim.run(30)
    seg = cell.get_data().segments[0]
    trace, spikes = _reference_lif(30, 1.0, {1: 5.0, 13: 5.0})
    np.testing.assert_allclose(seg.filter(name="v")[0].magnitude[:, 0], trace, atol=0.01)
    assert seg.spiketrains[0].magnitude.tolist() == spikes
    assert len(spikes) == 2


def _balanced(sim: ModuleType, **setup: Any) -> float:
    sim.setup(timestep=0.1, min_delay=0.1, **setup)
    rng = sim.NumpyRNG(seed=42)
    cell = sim.IF_curr_exp(
        tau_m=20.0,
        cm=0.25,
        v_rest=0.0,
        v_reset=10.0,
        v_thresh=20.0,
        tau_refrac=2.0,
        tau_syn_E=0.5,
        tau_syn_I=0.5,
    )
    exc = sim.Population(400, cell, label="exc")
    inh = sim.Population(100, cell, label="inh")
    both = sim.Assembly(exc, inh)
    both.initialize(v=sim.RandomDistribution("uniform", (10.0, 20.0), rng=rng))
    drive = sim.Population(500, sim.SpikeSourcePoisson(rate=15000.0), label="drive")
    w = 0.0549602204
    sim.Projection(
        drive,
        both,
        sim.OneToOneConnector(),
        sim.StaticSynapse(weight=w, delay=1.5),
        receptor_type="excitatory",
    )
    sim.Projection(
        exc,
        both,
        sim.FixedProbabilityConnector(0.1, rng=rng),
        sim.StaticSynapse(weight=w, delay=1.5),
        receptor_type="excitatory",
    )
    sim.Projection(
        inh,
        both,
        sim.FixedProbabilityConnector(0.1, rng=rng),
        sim.StaticSynapse(weight=-6 * w, delay=1.5),
        receptor_type="inhibitory",
    )
    both.record("spikes")
    sim.run(500.0)
    n_spikes = sum(len(s) for s in both.get_data("spikes").segments[0].spiketrains)
    sim.end()
    return n_spikes / (500 * 0.5)


@pytest.mark.timeout(300)
def test_a_balanced_random_network_fires_at_nests_rate(sim: ModuleType) -> None:
    ours = _balanced(sim)
    theirs = _in_nest("balanced", spike_precision="on_grid")
    assert theirs > 5.0
    assert abs(ours - theirs) <= 0.10 * theirs, (ours, theirs)
