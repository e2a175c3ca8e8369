"""IF_cond_exp: the core against a float64 reference of its equations, NEST's iaf_cond_exp for
shape, and the step-by-step reference executor on a small network."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from machine_models import Executor, Topology, lif
from machine_models.executor import Results
from machine_models.image import AppId, Image
from machine_models.regions import REGION_INPUT_TYPE, REGION_SYNAPSE_PARAMS
from machine_models.resources import dtcm_bytes
from tests.machine_models.reference import run_reference
from tests.machine_models.test_reference import assert_same
from toolchain import (
    FixedProbability,
    IFCondExp,
    IFCurrExp,
    Network,
    NetworkError,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
    map_network,
    virtual_allocation,
)
from toolchain.splitting import neuron_dtcm_bytes

ROOT = Path(__file__).resolve().parents[2]
BOARD = Topology.single_board()
DT_MS = 0.1
STIM_MS = (5.0, 5.3, 20.0, 40.0, 41.0)
CELL = {"tau_m": 20.0, "cm": 1.0, "v_rest": -65.0, "v_thresh": -50.0, "v_reset": -65.0}


def _single(weight_us: float, n_steps: int, **cell: float) -> tuple[Results, Image]:
    net = Network(dt_ms=DT_MS, seed=1)
    pop = net.population(1, IFCondExp(**{**CELL, **cell}), "cell")  # type: ignore[arg-type]
    pop.record(["v", "gsyn_exc", "gsyn_inh", "spikes"])
    stim = net.population(1, SpikeSourceArray(spike_times=STIM_MS), "stim")
    net.project(stim, pop, FixedProbability(1.0), StaticSynapse(weight_us, 1.0))
    net.project(stim, pop, FixedProbability(1.0), StaticSynapse(weight_us / 2, 2.0), "inhibitory")
    image = map_network(net, virtual_allocation(1)).image
    return Executor(image, BOARD).run(n_steps), image


def _cond_core(image: Image) -> tuple[int, int, int]:
    (core,) = [c for c in image.cores if c.app == AppId.IF_COND_EXP]
    return core.chip.x, core.chip.y, core.p


def float_reference(
    n_steps: int, weight_us: float, *, e_rev_e: float = 0.0, e_rev_i: float = -70.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V, g_exc and g_inh as the core records them, in float64 (same update, exact numbers)."""
    h, tau_m, cm, tau_syn = DT_MS, CELL["tau_m"], CELL["cm"], 5.0
    d = math.exp(-h / tau_syn)
    scale = tau_syn / h * (1.0 - d)
    exp_tc = math.exp(-h / tau_m)
    # a spike sent at step s arrives after the delay: the core sees it at step s + delay
    arrive_e = [round(t / h) + round(1.0 / h) for t in STIM_MS]
    arrive_i = [round(t / h) + round(2.0 / h) for t in STIM_MS]
    v, ge, gi = -65.0, 0.0, 0.0
    vs, ges, gis = (np.empty(n_steps) for _ in range(3))
    for t in range(n_steps):
        ge += scale * weight_us * arrive_e.count(t)
        gi += scale * weight_us / 2 * arrive_i.count(t)
        vs[t], ges[t], gis[t] = v, ge, gi
        current = ge * (e_rev_e - v) + gi * (e_rev_i - v)
        alpha = current * (tau_m / cm) + CELL["v_rest"]
        v = alpha - exp_tc * (alpha - v)
        if v >= CELL["v_thresh"]:
            v = CELL["v_reset"]
        ge *= d
        gi *= d
    return vs, ges, gis


def test_single_neuron_matches_float_reference() -> None:
    n_steps, weight = 600, 0.01
    res, image = _single(weight, n_steps)
    xyp = _cond_core(image)
    v, ge, gi = res.v_mv[xyp][:, 0], res.gsyn_exc_na[xyp][:, 0], res.gsyn_inh_na[xyp][:, 0]
    ref_v, ref_ge, ref_gi = float_reference(n_steps, weight)
    # it moved: depolarised by about 4 mV at the pair of inputs, then back
    assert v.max() > -62.0
    assert ref_v.max() > -62.0
    # conductances in uS within the resolution of a weight x 1024 in 16 bits and g >> 10
    assert np.abs(ge - ref_ge).max() < 2e-4
    assert np.abs(gi - ref_gi).max() < 2e-4
    # V within a few hundred s16.15 steps after hundreds of truncating updates
    assert np.abs(v - ref_v).max() < 0.02


def test_reversal_potentials_are_loaded_and_bound_the_voltage() -> None:
    res, image = _single(0.5, 300, v_thresh=100.0)
    xyp = _cond_core(image)
    core = next(c for c in image.cores if (c.chip.x, c.chip.y, c.p) == xyp)
    inputs = lif.decode_input_params(core.regions[REGION_INPUT_TYPE], 1)
    assert int(inputs["e_rev_e"][0]) == 0
    assert int(inputs["e_rev_i"][0]) == -70 * 32768
    # a huge excitatory conductance drives V towards e_rev_E = 0 mV, never beyond
    v = res.v_mv[xyp][:, 0]
    assert v.max() > -30.0
    assert v.max() <= 0.01


def _nest_trace(weight_us: float, t_stop_ms: float) -> list[list[float]]:
    code = (
        "import json, nest\n"
        "nest.set_verbosity('M_ERROR')\n"
        f"nest.resolution = {DT_MS}\n"
        "n = nest.Create('iaf_cond_exp', params={'C_m': 1000.0, 'g_L': 50.0, 'E_L': -65.0,"
        " 'V_th': -50.0, 'V_reset': -65.0, 't_ref': 0.1, 'tau_syn_ex': 5.0, 'tau_syn_in': 5.0,"
        " 'E_ex': 0.0, 'E_in': -70.0, 'V_m': -65.0})\n"
        f"sg = nest.Create('spike_generator', params={{'spike_times': {list(STIM_MS)!r}}})\n"
        f"nest.Connect(sg, n, syn_spec={{'weight': {weight_us * 1000.0}, 'delay': 1.0}})\n"
        f"nest.Connect(sg, n, syn_spec={{'weight': {-weight_us * 500.0}, 'delay': 2.0}})\n"
        f"m = nest.Create('multimeter', params={{'record_from': ['V_m'], 'interval': {DT_MS}}})\n"
        "nest.Connect(m, n)\n"
        f"nest.Simulate({t_stop_ms})\n"
        "ev = m.events\n"
        "out = [list(map(float, ev['times'])), list(map(float, ev['V_m']))]\n"
        "print('RESULT ' + json.dumps(out))\n"
    )
    # NEST's OpenMP runtime and numba's threads do not share a process
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    trace: list[list[float]] = json.loads(line[len("RESULT ") :])
    return trace


def test_single_neuron_has_the_shape_of_nest_iaf_cond_exp() -> None:
    n_steps, weight = 600, 0.01
    res, image = _single(weight, n_steps)
    v = res.v_mv[_cond_core(image)][:, 0]
    # NEST samples V at the end of a step (time t), the chip at the start (step t / h)
    times, nest_v = (np.asarray(x) for x in _nest_trace(weight, n_steps * DT_MS))
    steps = np.rint(times / DT_MS).astype(np.int64)
    keep = steps < n_steps
    ours, nest_v = v[steps[keep]], nest_v[keep]
    # NEST's input arrives as a jump of conductance, the chip's spread over a step (x
    # tau/h (1 - e^-h/tau)) and held a step: the same peaks and decay within 0.1 mV
    assert abs(ours.max() - nest_v.max()) < 0.05
    assert np.abs(ours - nest_v).max() < 0.1
    assert int(np.argmax(ours)) == pytest.approx(int(np.argmax(nest_v)), abs=3)


def _network(seed: int) -> Image:
    net = Network(dt_ms=0.1, seed=seed)
    rng = np.random.default_rng(seed)
    cond = net.population(120, IFCondExp(tau_refrac=2.0, e_rev_I=-80.0), "cond")
    curr = net.population(40, IFCurrExp(), "curr")
    cond.initialize(rng.uniform(-65.0, -52.0, 120))
    cond.record(["spikes", "v", "gsyn_exc", "gsyn_inh"])
    curr.record("spikes")
    drive = net.population(120, SpikeSourcePoisson(rate=3000.0), "drive")
    net.project(drive, cond, FixedProbability(0.05), StaticSynapse(0.004, 0.1))
    net.project(cond, cond, FixedProbability(0.1), StaticSynapse(0.002, 1.5))
    net.project(cond, curr, FixedProbability(0.1), StaticSynapse(0.5, 1.0))
    net.project(curr, cond, FixedProbability(0.2), StaticSynapse(0.01, 0.5), "inhibitory")
    return map_network(net, virtual_allocation(1)).image


def test_fast_executor_equals_the_reference_on_a_conductance_network() -> None:
    image = _network(3)
    fast = Executor(image, BOARD).run(300)
    assert_same(fast, run_reference(image, BOARD, 300))
    cond = _cond_core(image)
    assert fast.spikes[cond].shape[0] > 20
    assert fast.gsyn_inh_na[cond].max() > 0.0


def test_conductance_neurons_cost_their_reversal_potentials_in_dtcm() -> None:
    assert neuron_dtcm_bytes(256, 16, "IF_cond_exp") - neuron_dtcm_bytes(256, 16) == 8 * 256
    image = _network(3)
    cond = next(c for c in image.cores if c.app == AppId.IF_COND_EXP)
    sp = lif.decode_synapse_params(cond.regions[REGION_SYNAPSE_PARAMS])
    assert sp.n_neurons == 120
    ring = 2 * (1 << sp.ring_buffer_bits)
    assert dtcm_bytes(cond) == ring + 68 * 120 + 2048


def test_negative_conductance_weights_are_refused() -> None:
    net = Network(dt_ms=0.1)
    pop = net.population(2, IFCondExp(), "cell")
    stim = net.population(1, SpikeSourceArray(spike_times=(1.0,)), "stim")
    proj = net.project(stim, pop, FixedProbability(1.0), StaticSynapse(-0.01, 1.0), "inhibitory")
    with pytest.raises(NetworkError, match="conductance weights are >= 0"):
        proj.synapses(0.1)
