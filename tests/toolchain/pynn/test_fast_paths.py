"""The backend's shortcuts give what PyNN's own code paths give, connection for connection."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from pyNN.connectors import FixedNumberPreConnector

from toolchain.pynn.netbuild import _groups


class _ThroughPyNN(FixedNumberPreConnector):  # type: ignore[misc]
    """The same connector, which the backend leaves to PyNN's own target-by-target loop."""


def _cells(sim: ModuleType, n: int, label: str) -> object:
    return sim.Population(n, sim.IF_curr_exp(), label=label)


@pytest.mark.parametrize(
    ("n", "onto", "allow_self"),
    [
        (7, "assembly", False),  # the bench's case: pre is not post, so autapses may occur
        (3, "self", True),
        (40, "other", True),  # more sources per target than there are sources
    ],
)
def test_fixed_number_pre_with_replacement_makes_pynns_own_connections(
    sim: ModuleType, n: int, onto: str, allow_self: bool
) -> None:
    sim.setup(timestep=1.0)
    a = _cells(sim, 30, "a")
    b = _cells(sim, 12, "b")
    post = {"assembly": a + b, "self": a, "other": b}[onto]
    made = []
    rngs = []
    for connector_type in (FixedNumberPreConnector, _ThroughPyNN):
        rng = sim.NumpyRNG(seed=11)
        connector = connector_type(
            n, allow_self_connections=allow_self, with_replacement=True, rng=rng
        )
        proj = sim.Projection(a, post, connector, sim.StaticSynapse(weight=0.25, delay=2.0))
        made.append(proj.get(["weight", "delay"], format="list"))
        rngs.append(rng)
    assert len(made[0]) == n * post.size
    assert made[0] == made[1]
    # the generator is left where PyNN leaves it, so later draws match too
    after = [r.next(5, "uniform_int", {"low": 0, "high": 1000}) for r in rngs]
    np.testing.assert_array_equal(after[0], after[1])


def test_fixed_number_pre_with_random_weights_goes_through_pynn(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    a = _cells(sim, 10, "a")
    weights = sim.RandomDistribution("uniform", (0.1, 0.2), rng=sim.NumpyRNG(seed=3))
    rng = sim.NumpyRNG(seed=5)
    fast = sim.Projection(
        a,
        a,
        FixedNumberPreConnector(4, with_replacement=True, rng=rng),
        sim.StaticSynapse(weight=weights),
    )
    weights_again = sim.RandomDistribution("uniform", (0.1, 0.2), rng=sim.NumpyRNG(seed=3))
    slow = sim.Projection(
        a,
        a,
        _ThroughPyNN(4, with_replacement=True, rng=sim.NumpyRNG(seed=5)),
        sim.StaticSynapse(weight=weights_again),
    )
    assert fast.get(["weight"], format="list") == slow.get(["weight"], format="list")
    assert len({w for _, _, w in fast.get(["weight"], format="list")}) > 1


@pytest.mark.parametrize("is_sorted", [True, False])
def test_an_assembly_projection_splits_into_the_synapses_of_each_population(
    is_sorted: bool,
) -> None:
    rng = np.random.default_rng(4)
    # targets: an assembly of populations 0 (cells 0..4), 1 (5..11), 2 (12..19)
    post_pop = np.repeat(np.arange(3), [5, 7, 8])
    post = rng.integers(0, 20, size=300)
    post = np.sort(post) if is_sorted else post
    pre = rng.integers(0, 6, size=300)
    pre_pop = np.zeros(6, dtype=np.int64)
    groups = _groups(pre_pop, post_pop, pre, post)
    assert [(a, b) for a, b, _ in groups] == [(0, 0), (0, 1), (0, 2)]
    for _, b, pick in groups:
        assert isinstance(pick, slice) == is_sorted
        assert pick is not None
        picked = np.arange(post.size)[pick]
        np.testing.assert_array_equal(picked, np.flatnonzero(post_pop[post] == b))
