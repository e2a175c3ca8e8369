"""The fast executor equals the slow, step-by-step reference (``reference.py``) on small networks.

Every spike, recorded sample and counter must be equal: the reference is the oracle of the
executor's semantics; the pinned digests in ``test_executor`` are only a tripwire.
"""

from __future__ import annotations

import numpy as np
import pytest

from machine_models import Executor, Image, Topology
from machine_models.executor import Results
from tests.machine_models.networks import recurrent_network
from tests.machine_models.reference import run_reference
from tests.machine_models.test_delays import delayed_image
from toolchain import (
    FixedProbability,
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

BOARD = Topology.single_board()


def assert_same(fast: Results, slow: Results) -> None:
    """Every field of two runs' results is equal."""
    for name in ("spikes", "v_mv", "gsyn_exc_na", "gsyn_inh_na"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert sorted(map(tuple, a)) == sorted(map(tuple, b)), name
        for xyp in a:
            assert np.array_equal(a[xyp], b[xyp]), (name, xyp)
    assert {tuple(k): dict(v) for k, v in fast.core_provenance.items()} == {
        tuple(k): dict(v) for k, v in slow.core_provenance.items()
    }
    assert {tuple(k): dict(v) for k, v in fast.router_provenance.items()} == {
        tuple(k): dict(v) for k, v in slow.router_provenance.items()
    }


def mapped_network(seed: int) -> tuple[Image, Topology]:
    """A toolchain-mapped network over two boards: E/I cells, arrays, Poisson drive, delays
    long enough for extensions."""
    net = Network(dt_ms=0.1, seed=seed)
    rng = np.random.default_rng(seed)
    cell = IFCurrExp(tau_m=20.0, cm=0.25, v_rest=0.0, v_thresh=15.0, v_reset=10.0, tau_refrac=2.0)
    exc = net.population(300, cell, "exc")
    inh = net.population(80, IFCurrExp(tau_syn_I=10.0), "inh")
    exc.initialize(rng.uniform(0.0, 15.0, 300))
    exc.record(["spikes", "v", "gsyn_exc"])
    inh.record("spikes", sampling_interval_ms=0.5)
    drive = net.population(300, SpikeSourcePoisson(rate=8000.0), "drive")
    slow = net.population(80, SpikeSourcePoisson(rate=40.0, start=3.0, duration=20.0), "slow")
    kicks = net.population(2, SpikeSourceArray(spike_times=((1.0, 2.0), (2.05,))), "kicks")
    # a source nobody listens to has no key: like the chip, it sends nothing
    net.population(20, SpikeSourcePoisson(rate=500.0), "idle")
    pre, post = rng.integers(0, 300, 3000), rng.integers(0, 300, 3000)
    delays = rng.uniform(0.1, 6.0, 3000)
    net.project(exc, exc, FromArrays(pre, post), StaticSynapse(0.08, delays), label="ee")
    net.project(exc, inh, FixedProbability(0.05), StaticSynapse(0.3, 1.0), label="ei")
    net.project(inh, exc, FixedProbability(0.1), StaticSynapse(-0.4, 0.5), "inhibitory")
    net.project(drive, exc, OneToOne(), StaticSynapse(0.06, 0.1))
    net.project(slow, inh, OneToOne(), StaticSynapse(2.0, 1.5))
    net.project(kicks, exc, FixedProbability(0.5), StaticSynapse(1.5, 0.3))
    topology = virtual_allocation(2)
    return map_network(net, topology).image, topology


@pytest.mark.parametrize(
    "make",
    [
        lambda: (recurrent_network(), BOARD),
        lambda: (recurrent_network(seed=4, min_delay=6), BOARD),
        lambda: (
            delayed_image([24, 40, 56, 9, 12, 128], [(2, 0), (5, 0)] + [(40, 0)] * 300),
            BOARD,
        ),
        lambda: mapped_network(5),
    ],
    ids=["recurrent", "recurrent-windows", "delay-extensions", "mapped"],
)
def test_fast_executor_equals_the_reference(make) -> None:  # type: ignore[no-untyped-def]
    image, topology = make()
    slow = run_reference(image, topology, 160)
    assert_same(Executor(image, topology).run(100), run_reference(image, topology, 100))
    whole = Executor(image, topology).run(160)
    assert_same(whole, slow)
    # there is something to compare
    assert sum(p["packets_sent"] for p in whole.core_provenance.values()) > 100
