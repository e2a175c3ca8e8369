"""STDP through the toolchain: fewer neurons per core for populations that learn, plastic
rows in the image, and the weights a run learned read back per projection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from machine_models import Executor, validate
from machine_models.regions import REGION_SYNAPSE_DYNAMICS
from toolchain import (
    AllToAll,
    IFCurrExp,
    Network,
    NetworkError,
    OneToOne,
    SpikeSourceArray,
    StaticSynapse,
    StdpSynapse,
    map_network,
    virtual_allocation,
)
from toolchain.splitting import (
    DTCM_BYTES,
    MappingConfig,
    neuron_dtcm_bytes,
    plastic_dtcm_bytes,
)

BOARD = virtual_allocation(1)
RULE = StdpSynapse(
    weight=1.0, delay=2.0, tau_plus=16.0, tau_minus=33.0, a_plus=0.25, a_minus=0.2, w_max=2.0
)


def learning_network(synapse: StaticSynapse | StdpSynapse, n_cells: int = 600) -> Network:
    net = Network(dt_ms=1.0, seed=3)
    src = net.population(20, SpikeSourceArray(spike_times=(5.0, 50.0)), "src")
    cells = net.population(n_cells, IFCurrExp(), "cells")
    slow = net.population(20, SpikeSourceArray(spike_times=(7.0,)), "slow")
    # a 20 ms delay: 32 delay slots per core, so the ring buffers are as large as they get
    net.project(slow, cells, AllToAll(), StaticSynapse(weight=0.01, delay=20.0))
    net.project(src, cells, AllToAll(), synapse)
    return net


def neurons_per_core(net: Network) -> set[int]:
    mapped = map_network(net, BOARD)
    validate(mapped.image, mapped.topology)
    cells = net.populations[1]
    return {v.stride for v, _ in mapped.cores_of(cells)}


def test_populations_that_learn_fit_fewer_neurons_per_core() -> None:
    static = neurons_per_core(learning_network(StaticSynapse(weight=1.0, delay=2.0)))
    plastic = neurons_per_core(learning_network(RULE))
    assert static == {256}
    (stride,) = plastic
    assert stride < 256
    # the most that fit: ring buffers, state, histories and tables of one more do not
    net = learning_network(RULE)
    cells = net.populations[1]

    def needed(n: int) -> int:
        slots = min(32, 1 << (14 - math.ceil(math.log2(n)) - 1))
        return neuron_dtcm_bytes(n, slots) + plastic_dtcm_bytes(net, cells, n)

    assert needed(stride) <= DTCM_BYTES < needed(stride + 1)
    assert plastic_dtcm_bytes(net, cells, stride) >= 100 * stride


def test_a_configured_limit_below_what_fits_is_kept() -> None:
    config = MappingConfig(max_atoms_per_core={"IF_curr_exp": 64, "SpikeSourceArray": 256})
    mapped = map_network(learning_network(RULE), BOARD, config)
    assert {v.stride for v, _ in mapped.cores_of(mapped.network.populations[1])} == {64}


def test_plastic_rows_cost_more_sdram_than_static_ones() -> None:
    static = map_network(learning_network(StaticSynapse(weight=1.0, delay=2.0), 256), BOARD)
    plastic = map_network(learning_network(RULE, 256), BOARD)

    def matrix_bytes(mapped: object) -> int:
        cores = mapped.image.cores  # type: ignore[attr-defined]
        return sum(len(c.regions.get(6, b"")) for c in cores)

    # the same synapses: a plastic row adds its 2-word history, and its halves pad to words
    assert matrix_bytes(plastic) > matrix_bytes(static)
    assert any(REGION_SYNAPSE_DYNAMICS in c.regions for c in plastic.image.cores)


def pair_network(weight_rule: str) -> tuple[Network, float, float]:
    """One pre spike, then a drive that makes the cell fire: potentiation at the next pre.

    The plastic delay (3 steps) is below the core's 4 delay slots: a delay of exactly the
    slots is stored as 0, which the chip's rule then reads as no delay.
    """
    net = Network(dt_ms=1.0, seed=1)
    pre = net.population(1, SpikeSourceArray(spike_times=(95.0, 500.0)), "pre")
    drive = net.population(1, SpikeSourceArray(spike_times=(100.0,)), "drive")
    cell = net.population(1, IFCurrExp(tau_syn_E=1.0, tau_refrac=1.0), "cell")
    cell.record("spikes")
    net.project(drive, cell, OneToOne(), StaticSynapse(weight=30.0, delay=1.0))
    rule = StdpSynapse(
        weight=1.0,
        delay=3.0,
        weight_rule=weight_rule,  # type: ignore[arg-type]
        tau_plus=16.0,
        tau_minus=33.0,
        a_plus=0.25,
        a_minus=0.2,
        w_max=2.0,
    )
    net.project(pre, cell, OneToOne(), rule, label="learning")
    return net, 95.0, 3.0


@pytest.mark.parametrize("weight_rule", ["additive", "multiplicative"])
def test_learned_weights_are_read_back_per_projection(weight_rule: str) -> None:
    net, t_pre, delay = pair_network(weight_rule)
    mapped = map_network(net, BOARD)
    results = Executor(mapped.image, mapped.topology).run(520)
    (xyp,) = [x for x in results.spikes if len(results.spikes[x])]
    (t_post,) = results.spikes[xyp][:, 0].tolist()
    learning = net.projections[1]
    (w,) = mapped.learned_weights(learning, results).tolist()
    dt = t_post + delay - t_pre
    gain = 0.25 * math.exp(-dt / 16.0)
    expected = 1.0 + gain * (1.0 if weight_rule == "additive" else (2.0 - 1.0))
    shift = mapped.shifts[(2, 0)]
    assert abs(w - expected) <= 0.25 * 2 / 2048 + 2.0 ** (shift - 15)
    assert w > 1.0
    with pytest.raises(NetworkError, match="is not plastic"):
        mapped.learned_weights(net.projections[0], results)


def test_one_population_learns_with_one_rule() -> None:
    net = learning_network(RULE)
    src, cells, _ = net.populations
    with pytest.raises(NetworkError, match="already learns with another STDP rule"):
        net.project(src, cells, OneToOne(), StdpSynapse(weight=1.0, tau_plus=5.0))


def test_bad_rules_are_refused() -> None:
    with pytest.raises(NetworkError, match="weight rule must be additive or multiplicative"):
        StdpSynapse(weight_rule="hebbian")  # type: ignore[arg-type]
    with pytest.raises(NetworkError, match="0 <= w_min <= w_max"):
        StdpSynapse(w_min=1.0, w_max=0.5)


def test_learned_weights_are_those_of_the_executor_rows() -> None:
    net, _, _ = pair_network("additive")
    mapped = map_network(net, BOARD)
    results = Executor(mapped.image, mapped.topology).run(10)
    (w,) = mapped.learned_weights(net.projections[1], results).tolist()
    # nothing learned yet: the stored initial weight, within one stored step
    assert w == pytest.approx(1.0, abs=2.0 ** (mapped.shifts[(2, 0)] - 15))
    assert np.all(np.isfinite(mapped.learned_weights(net.projections[1], results)))
