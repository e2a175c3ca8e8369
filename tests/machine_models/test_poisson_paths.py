"""The executor's shortcuts for Poisson sources equal the general paths exactly.

A Poisson core whose sources are all active in the fast regime takes a branch-free stream of
draws in ``kernels``: from the same generator, on random cores with a shared rate or not, it
must agree with the per-source loop on every packet, payload and the generator's state. The
payloads of a core whose keys each reach one neuron core through one one-synapse row are
added directly: the results must equal those of the walk over the fan-out rows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from machine_models import Executor, Image, Topology, kernels, sources
from machine_models.image import CoreXYP
from machine_models.regions import to_u032
from tests.machine_models.networks import digest, recurrent_network
from toolchain import (
    FromArrays,
    IFCurrExp,
    Network,
    OneToOne,
    SpikeSourcePoisson,
    StaticSynapse,
    map_network,
    virtual_allocation,
)

_I64 = np.int64
BOARD = Topology.single_board()


def one_step(
    lambdas: npt.NDArray[np.float64],
    seed: tuple[int, int, int, int],
    *,
    stream: bool,
    shared: bool,
) -> tuple[list[tuple[int, int]], list[int]]:
    """Packets (neuron, payload) of one step of a core of fast-regime sources, and its state.

    The stream path also counts packets and spikes per key: checked here against the packets.
    """
    nn = lambdas.size
    eml = to_u032(np.exp(-lambdas)).astype(_I64)
    table = np.zeros((1, kernels.PO_COLUMNS), _I64)
    table[0, kernels.PO_NN] = nn
    table[0, kernels.PO_FAST_TO] = 1
    table[0, kernels.PO_LIMIT] = int(eml[0]) if shared else -1
    zeros = np.zeros(nn, _I64)
    po = kernels.PoissonCores(
        table,
        np.array([seed], dtype=np.uint64),
        zeros,
        np.full(nn, 1 << 20, _I64),
        np.full(nn, sources.REGIME_FAST, _I64),
        eml,
        zeros,
        zeros,
        zeros.copy(),
    )
    state = po.state
    em_j = np.zeros(nn, _I64)
    em_k = np.zeros(nn, _I64)
    if stream:
        # keys of the core from entry 1 on, two colours: counted at every second entry
        packets = np.zeros(2 * nn + 3, _I64)
        spikes = np.zeros(2 * nn + 3, _I64)
        m = kernels._poisson_fast_step(0, 0, po, em_j, em_k, 1, 2, 1, packets, spikes)
        expect_packets = np.zeros(2 * nn + 3, _I64)
        expect_spikes = np.zeros(2 * nn + 3, _I64)
        expect_packets[3 + 2 * em_j[:m]] = 1
        expect_spikes[3 + 2 * em_j[:m]] = em_k[:m]
        assert packets.tolist() == expect_packets.tolist()
        assert spikes.tolist() == expect_spikes.tolist()
    else:
        m = kernels._poisson_step(0, 0, 0, po, em_j, em_k)
    return list(zip(em_j[:m].tolist(), em_k[:m].tolist(), strict=True)), state[0].tolist()


seeds = st.tuples(*[st.integers(1, 2**32 - 1)] * 4)
# the fast regime (lambda from 0.02 to 20 per step), where exp(-lambda) is non-zero
rates = st.floats(0.02, 10.0)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, lam=rates, nn=st.integers(1, 300))
def test_stream_equals_loop_with_one_shared_rate(
    seed: tuple[int, int, int, int], lam: float, nn: int
) -> None:
    lambdas = np.full(nn, lam)
    loop = one_step(lambdas, seed, stream=False, shared=False)
    assert one_step(lambdas, seed, stream=True, shared=True) == loop
    assert one_step(lambdas, seed, stream=True, shared=False) == loop


@settings(max_examples=60, deadline=None)
@given(seed=seeds, lambdas=st.lists(rates, min_size=1, max_size=300))
def test_stream_equals_loop_with_a_rate_per_source(
    seed: tuple[int, int, int, int], lambdas: list[float]
) -> None:
    values = np.array(lambdas)
    loop = one_step(values, seed, stream=False, shared=False)
    assert one_step(values, seed, stream=True, shared=False) == loop


def test_high_rate_sends_payloads_on_both_paths() -> None:
    lambdas = np.full(256, 8.0)
    loop, state = one_step(lambdas, (5, 6, 7, 8), stream=False, shared=False)
    assert max(k for _, k in loop) > 8
    assert one_step(lambdas, (5, 6, 7, 8), stream=True, shared=True) == (loop, state)


def driven_by_toolchain() -> Image:
    """600 neurons driven one-to-one by 600 Poisson sources, which the toolchain packs into
    fewer cores than the neurons: a Poisson core's keys reach two neuron cores."""
    rng = np.random.default_rng(2)
    net = Network(dt_ms=0.1, seed=9)
    cell = IFCurrExp(tau_m=20.0, cm=0.25, v_rest=0.0, v_thresh=20.0, v_reset=10.0)
    neurons = net.population(600, cell, "neurons")
    neurons.initialize(rng.uniform(10.0, 20.0, 600))
    neurons.record("spikes")
    drive = net.population(600, SpikeSourcePoisson(rate=20000.0), "drive")
    pre, post = rng.integers(0, 600, 6000), rng.integers(0, 600, 6000)
    net.project(
        neurons, neurons, FromArrays(pre, post), StaticSynapse(0.3, 1.5), "excitatory", "rec"
    )
    net.project(drive, neurons, OneToOne(), StaticSynapse(0.9, 1.5), "excitatory", "ext")
    mapped = map_network(net, virtual_allocation(1))
    return mapped.image


def reaches(ex: Executor) -> list[npt.NDArray[np.int64]]:
    """How each emitting core reaches each group, in every grouping the executor runs."""
    return [layout.fanout.reach for layout in ex._layouts.values()]


def walk_every_row(ex: Executor) -> None:
    """Make every direct delivery walk its rows instead, in every grouping."""
    for reach in reaches(ex):
        reach[reach >= 0] = kernels.REACH_ROWS


def test_direct_payloads_equal_the_row_walk() -> None:
    image = driven_by_toolchain()
    direct = Executor(image, BOARD)
    # some Poisson core reaches two groups directly, each through part of its keys
    assert any(((reach >= 0).sum(axis=1) > 1).any() for reach in reaches(direct))
    walked = Executor(image, BOARD)
    walk_every_row(walked)
    assert digest(direct.run(300)) == digest(walked.run(300))


def test_direct_payloads_saturate_like_the_row_walk() -> None:
    # strong one-to-one weights: ring buffers saturate
    direct = Executor(recurrent_network(), BOARD)
    assert all((reach >= 0).any() for reach in reaches(direct))
    walked = Executor(recurrent_network(), BOARD)
    walk_every_row(walked)
    a, b = direct.run(200), walked.run(200)
    assert digest(a) == digest(b)
    assert a.core_provenance[CoreXYP(0, 0, 1)]["ring_buffer_saturations"] > 0
