"""A small network mapped by the toolchain and run on the chip model's executor."""

from __future__ import annotations

import numpy as np

from machine_models import Executor, validate
from toolchain import (
    FromList,
    IFCurrExp,
    MappedNetwork,
    Network,
    Population,
    SpikeSourceArray,
    StaticSynapse,
    map_network,
    virtual_allocation,
)


def _spikes(mapped: MappedNetwork, results: object, pop: Population) -> dict[int, list[int]]:
    spikes_of = {tuple(k): v for k, v in results.spikes.items()}  # type: ignore[attr-defined]
    out: dict[int, list[int]] = {}
    for vertex, where in mapped.cores_of(pop):
        for step, neuron in spikes_of.get(tuple(where), np.zeros((0, 2), np.int64)).tolist():
            out.setdefault(neuron + vertex.lo, []).append(step)
    return out


def test_spikes_arrive_where_expected_with_the_right_delays() -> None:
    net = Network(dt_ms=1.0, seed=3)
    src = net.population(2, SpikeSourceArray(spike_times=((3.0,), (40.0,))), "src")
    cell = IFCurrExp(
        cm=0.25, tau_m=20.0, v_rest=0.0, v_reset=0.0, v_thresh=5.0, tau_syn_E=1.0, tau_refrac=2.0
    )
    # 300 neurons: two cores of 256 + 44, 32 delay slots, so 69 steps needs 2 extension stages
    cells = net.population(300, cell, "cells")
    cells.initialize(0.0)
    cells.record("spikes")
    wiring = ((0, 7, 4.0, 5.0), (0, 270, 4.0, 69.0), (1, 100, 4.0, 1.0), (1, 299, 4.0, 32.0))
    net.project(src, cells, FromList(wiring), StaticSynapse())
    mapped = map_network(net, virtual_allocation(3))
    validate(mapped.image, mapped.topology)
    results = Executor(mapped.image, mapped.topology).run(150)
    spikes = _spikes(mapped, results, cells)
    assert set(spikes) == {7, 270, 100, 299}
    assert all(len(steps) == 1 for steps in spikes.values())
    lag = spikes[7][0] - (3 + 5)
    assert lag >= 0
    assert spikes[270][0] == 3 + 69 + lag
    assert spikes[100][0] == 40 + 1 + lag
    assert spikes[299][0] == 40 + 32 + lag


def test_same_seed_gives_the_same_image() -> None:
    def build() -> bytes:
        net = Network(dt_ms=1.0, seed=9)
        a = net.population(50, IFCurrExp(), "a")
        net.project(a, a, FromList(((1, 2), (3, 4))), StaticSynapse(0.2, 3.0))
        return map_network(net, virtual_allocation(1)).image.encode()

    assert build() == build()
