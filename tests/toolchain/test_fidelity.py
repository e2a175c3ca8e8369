"""Mapping choices that must be sPyNNaker 7.4.1's: weight shifts, defaults, spike times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from machine_models import Executor, validate
from machine_models.regions import REGION_DATA
from machine_models.sources import decode_spike_array
from toolchain import (
    FixedNumberPre,
    FromArrays,
    IFCurrExp,
    Network,
    OneToOne,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
    map_network,
    virtual_allocation,
)
from toolchain.build import spike_array_steps
from toolchain.synapses import expected_upper_bound


def test_fixed_delays_take_the_worst_case_shift() -> None:
    # 80 E sources x 0.5 nA + one Poisson source x 0.5 nA: W = 40.5 -> shift 6; the statistics
    # at 30 Hz would give a far finer shift (1)
    net = Network(dt_ms=0.1, seed=1)
    cells = net.population(100, IFCurrExp(), "cells")
    drive = net.population(100, SpikeSourcePoisson(rate=20000.0), "drive")
    net.project(cells, cells, FixedNumberPre(80, with_replacement=True), StaticSynapse(0.5, 1.5))
    net.project(cells, cells, FixedNumberPre(20), StaticSynapse(-2.0, 1.5), "inhibitory")
    net.project(drive, cells, OneToOne(), StaticSynapse(0.5, 1.5))
    mapped = map_network(net, virtual_allocation(1))
    assert mapped.shifts[(cells.index, 0)] == 6
    assert mapped.shifts[(cells.index, 1)] == 6  # 20 x 2.0 = 40


def test_exact_power_of_two_takes_one_more_bit() -> None:
    net = Network(dt_ms=1.0, seed=1)
    cells = net.population(4, IFCurrExp(), "cells")
    net.project(cells, cells, FromArrays(np.array([0, 1]), np.array([2, 2])), StaticSynapse(2.0))
    assert map_network(net, virtual_allocation(1)).shifts[(cells.index, 0)] == 3  # W = 4


def test_delays_that_vary_use_the_statistics_capped_by_the_worst_case() -> None:
    net = Network(dt_ms=1.0, seed=1)
    cells = net.population(100, IFCurrExp(), "cells")
    delays = np.where(np.arange(100 * 80) % 2 == 0, 1.0, 3.0)
    net.project(
        cells,
        cells,
        FixedNumberPre(80, with_replacement=True),
        StaticSynapse(0.5, delays),
    )
    shift = map_network(net, virtual_allocation(1)).shifts[(cells.index, 0)]
    # 80 sources at 30 Hz, dt 1 ms: mean 1.2 nA, sd ~ 0.77 nA -> about 5.1 nA: shift 3
    assert shift == 3


def test_an_uninitialised_population_starts_at_minus_65_mv() -> None:
    net = Network(dt_ms=1.0, seed=1)
    cells = net.population(3, IFCurrExp(v_rest=0.0, v_reset=0.0, v_thresh=20.0), "cells")
    cells.record("v")
    mapped = map_network(net, virtual_allocation(1))
    results = Executor(mapped.image, mapped.topology).run(2)
    ((_, where),) = mapped.cores_of(cells)
    v = results.v_mv[tuple(where)]  # type: ignore[index]
    assert v[0].tolist() == [-65.0, -65.0, -65.0]
    assert v[1, 0] > -65.0  # relaxing towards v_rest = 0


@pytest.mark.parametrize(
    ("time_ms", "timestep_us", "step"),
    [(10.05, 100, 101), (10.0, 100, 100), (10.01, 1000, 11), (3.0, 1000, 3), (4.35, 100, 44)],
)
def test_spike_array_times_fire_at_the_next_step(
    time_ms: float, timestep_us: int, step: int
) -> None:
    assert int(spike_array_steps([time_ms], timestep_us)[0]) == step


def test_spike_array_region_holds_the_rounded_up_steps() -> None:
    net = Network(dt_ms=0.1, seed=1)
    src = net.population(1, SpikeSourceArray(spike_times=(10.05, 20.0)), "src")
    cells = net.population(1, IFCurrExp(), "cells")
    net.project(src, cells, OneToOne(), StaticSynapse(0.1, 1.0))
    mapped = map_network(net, virtual_allocation(1))
    ((_, where),) = mapped.cores_of(src)
    (core,) = [c for c in mapped.image.cores if tuple(c.xyp) == tuple(where)]
    steps, _ = decode_spike_array(core.regions[REGION_DATA])
    assert steps.tolist() == [101, 200]


def test_a_network_without_synapses_maps_and_runs() -> None:
    net = Network(dt_ms=1.0, seed=1)
    cells = net.population(10, IFCurrExp(i_offset=2.0), "cells")
    net.population(5, SpikeSourcePoisson(rate=10.0), "idle")
    cells.record("spikes")
    mapped = map_network(net, virtual_allocation(1))
    validate(mapped.image, mapped.topology)
    results = Executor(mapped.image, mapped.topology).run(100)
    ((_, where),) = mapped.cores_of(cells)
    assert len(results.spikes[tuple(where)]) > 0  # type: ignore[index]


def upper_bound_as_written(
    mean: float, sd: float, rate_hz: float, n: int, sigma: float, steps_per_s: float
) -> float:
    """7.4.1's ``_ring_buffer_expected_upper_bound`` line by line, its ``gammaincc`` of an
    integer first argument summed directly (Q(a, x) = sum_{k < a} exp(-x) x**k / k!)."""
    lam = n * rate_hz / steps_per_s
    poisson_variance = lam * mean**2
    upper = round(lam + 3.0 * math.sqrt(lam))
    weight_variance = 0.0
    if sd > 0:
        lngamma = math.lgamma(1 + upper)
        gammai = sum(math.exp(-lam) * lam**k / math.factorial(k) for k in range(upper + 1))
        big_ratio = math.log(lam) * upper - lngamma
        if -701.0 < big_ratio < 701.0 and big_ratio != 0.0:
            weight_variance = math.exp(
                -lam
                + math.log(lam)
                + 2.0 * math.log(sd)
                + math.log(math.exp(lam) * gammai - math.exp(big_ratio))
            )
    return lam * mean + sigma * math.sqrt(poisson_variance + weight_variance)


@pytest.mark.parametrize(
    ("mean", "sd", "n", "steps_per_s"),
    [(0.5, 0.0, 80, 1000.0), (0.3, 0.2, 80, 1000.0), (1.0, 2.0, 2000, 1000.0), (0.2, 1.0, 3, 1e4)],
)
def test_the_upper_bound_is_7_4_1s(mean: float, sd: float, n: int, steps_per_s: float) -> None:
    got = expected_upper_bound(mean, sd, 30.0, n, 5.0, steps_per_s)
    assert got == pytest.approx(upper_bound_as_written(mean, sd, 30.0, n, 5.0, steps_per_s))


def test_the_weight_variance_counts_only_up_to_the_poisson_limit() -> None:
    # 80 synapses at 30 Hz, dt 1 ms: lam 2.4, counts up to U = round(2.4 + 3 sqrt 2.4) = 7
    lam, sd, mean = 2.4, 0.4, 0.3
    p_below_u = sum(math.exp(-lam) * lam**k / math.factorial(k) for k in range(7))
    expected = lam * mean + 5.0 * math.sqrt(lam * mean**2 + lam * sd**2 * p_below_u)
    assert expected_upper_bound(mean, sd, 30.0, 80, 5.0, 1000.0) == pytest.approx(expected)
    # a handful of synapses at dt 0.1 ms: U is 0 and 7.4.1 leaves the weight part out
    lam = 3 * 30.0 / 1e4
    alone = lam * mean + 5.0 * math.sqrt(lam * mean**2)
    assert expected_upper_bound(mean, 10.0, 30.0, 3, 5.0, 1e4) == pytest.approx(alone)


def test_the_statistics_pool_every_synapse_of_the_type() -> None:
    # one neuron of 100 takes all the strong weights. Neuron by neuron its 80 inputs at 4 nA
    # would need ~40 nA (shift 6); 7.4.1 pools the projection's weights (mean 0.139, sd 0.388,
    # n 80): ~3.5 nA, raised to the largest weight, 4 nA, a power of two: shift 3
    net = Network(dt_ms=1.0, seed=1)
    cells = net.population(100, IFCurrExp(), "cells")
    post = np.repeat(np.arange(100), 80)
    pre = np.random.default_rng(3).integers(0, 100, post.size)
    weights = np.where(post == 0, 4.0, 0.1)
    delays = np.where(np.arange(post.size) % 2 == 0, 1.0, 3.0)
    net.project(cells, cells, FromArrays(pre, post), StaticSynapse(weights, delays))
    assert map_network(net, virtual_allocation(1)).shifts[(cells.index, 0)] == 3
