"""The IF_curr_exp core against float64 references: input spikes, saturation, inhibition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from machine_models import Executor, Topology, lif, validate
from machine_models.regions import REGION_DATA
from tests.machine_models.networks import driven_image

BOARD = Topology.single_board()
S1615 = 2.0**-15


def float_reference(
    n_steps: int,
    arrivals_na: dict[int, float],
    *,
    v_init: float,
    v_rest: float,
    tau_m: float,
    cm: float,
    tau_syn: float,
    h_ms: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """V and I_syn as recorded (after the transfer, before the update) in float64."""
    d = math.exp(-h_ms / tau_syn)
    g = tau_syn / h_ms * (1.0 - d)
    exp_tc = math.exp(-h_ms / tau_m)
    v, i_syn = v_init, 0.0
    vs, gs = np.empty(n_steps), np.empty(n_steps)
    for t in range(n_steps):
        i_syn += g * arrivals_na.get(t, 0.0)
        vs[t], gs[t] = v, i_syn
        alpha = i_syn * (tau_m / cm) + v_rest
        v = alpha - exp_tc * (alpha - v)
        i_syn *= d
    return vs, gs


@pytest.mark.parametrize(("delay", "weight_na"), [(1, 1.5), (3, 0.25), (16, 2.0)])
def test_single_input_spike_matches_float_reference(delay: int, weight_na: float) -> None:
    shift = 2
    weight_u16 = int(lif.weights_to_u16(weight_na, shift))
    params = lif.LifParams(1, v_init=-65.0, v_rest=-65.0, cm=1.0, tau_m=20.0, tau_syn_e=5.0)
    image = driven_image(params, [(4, 0)], [(0, 0, weight_u16, delay, 0)], shifts=(shift, shift))
    validate(image, BOARD)
    res = Executor(image, BOARD).run(80)
    v = res.v_mv[(0, 0, 1)][:, 0]
    ge = res.gsyn_exc_na[(0, 0, 1)][:, 0]
    ref_v, ref_ge = float_reference(
        80,
        {4 + delay: weight_u16 * 2.0 ** (shift - 15)},
        v_init=-65.0,
        v_rest=-65.0,
        tau_m=20.0,
        cm=1.0,
        tau_syn=5.0,
    )
    # the input arrives exactly `delay` steps after the spike
    assert np.flatnonzero(ge)[0] == 4 + delay
    assert np.max(np.abs(ge - ref_ge)) < 8 * S1615
    assert np.max(np.abs(v - ref_v)) < 80 * 4 * S1615
    assert v.max() > -65.0 + 0.5 * weight_na  # the PSP is really there


def test_inhibitory_spike_lowers_v() -> None:
    params = lif.LifParams(1, v_init=-60.0, v_rest=-60.0, tau_syn_i=5.0)
    image = driven_image(params, [(0, 0)], [(0, 0, 8192, 2, 1)], shifts=(2, 2))
    res = Executor(image, BOARD).run(30)
    gi = res.gsyn_inh_na[(0, 0, 1)][:, 0]
    assert gi[2] == pytest.approx(8192 * 2.0**-13 * 5.0 * (1 - math.exp(-0.2)), abs=1e-4)
    assert res.v_mv[(0, 0, 1)][:, 0].min() < -60.5
    assert res.gsyn_exc_na[(0, 0, 1)].max() == 0.0


def test_ring_buffer_saturation_is_counted_and_clipped() -> None:
    # three spikes of 40000 into one slot: 40000, then 80000 -> 0xFFFF (1), then again (2)
    params = lif.LifParams(2, v_thresh=100.0)
    spikes = [(3, 0), (3, 0), (3, 0), (3, 1)]
    synapses = [(0, 0, 40000, 2, 0), (1, 1, 100, 2, 0)]
    image = driven_image(params, spikes, synapses, n_sources=2, shifts=(0, 0))
    res = Executor(image, BOARD).run(10)
    prov = res.core_provenance[(0, 0, 1)]
    assert prov["ring_buffer_saturations"] == 2
    ge = res.gsyn_exc_na[(0, 0, 1)]
    init = int(lif.decode_neuron_params(image.cores[0].regions[REGION_DATA])["exc_init"][0])
    # the clipped slot, times the core's init factor (u0.32, truncated)
    assert ge[5, 0] * 32768 == (0xFFFF * init) >> 32
    assert ge[5, 1] * 32768 == (100 * init) >> 32
    assert init / 2**32 == pytest.approx(5.0 * (1 - math.exp(-0.2)), rel=1e-3)


def test_payload_saturation_counts_each_lost_spike() -> None:
    # ten spikes in one step into one one-synapse row: 0xFFFF // 10000 = 6 fit, 4 saturate
    params = lif.LifParams(1, v_thresh=100.0)
    image = driven_image(params, [(1, 0)] * 10, [(0, 0, 10000, 1, 0)], shifts=(0, 0))
    res = Executor(image, BOARD).run(5)
    assert res.core_provenance[(0, 0, 1)]["ring_buffer_saturations"] == 4


def test_threshold_uses_greater_or_equal_and_refractory_clamps_v() -> None:
    # constant current drives v up; after a spike v stays at v_reset for t_refract steps
    params = lif.LifParams(
        1,
        v_init=0.0,
        v_rest=0.0,
        cm=1.0,
        tau_m=20.0,
        i_offset=2.0,
        v_thresh=5.0,
        v_reset=-1.0,
        tau_refrac=5.0,
    )
    image = driven_image(params, [], [(0, 0, 0, 1, 0)])
    res = Executor(image, BOARD).run(60)
    v = res.v_mv[(0, 0, 1)][:, 0]
    first = int(res.spikes[(0, 0, 1)][0, 0])
    assert v[first] < 5.0 <= v[first] + 2.0  # v before the crossing update
    # recorded before each update: the reset value, then t_refract = 5 skipped updates
    assert np.all(v[first + 1 : first + 7] == -1.0)
    assert v[first + 7] > -1.0
