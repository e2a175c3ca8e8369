"""Mapping choices that must be sPyNNaker 7.4.1's: weight shifts, defaults, spike times."""

from __future__ import annotations

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
