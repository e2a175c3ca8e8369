"""Network description: connectors, weights, delays and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.errors import NetworkError
from toolchain.network import (
    AllToAll,
    FixedNumberPre,
    FixedProbability,
    FromArrays,
    FromList,
    IFCurrExp,
    Network,
    OneToOne,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
)


def _net() -> Network:
    return Network(dt_ms=0.1, seed=5)


def test_one_to_one_pairs_equal_indices() -> None:
    net = _net()
    a = net.population(7, IFCurrExp())
    proj = net.project(a, a, OneToOne(), StaticSynapse(0.1, 1.0))
    pre, post, w, d = proj.synapses(net.dt_ms)
    assert pre.tolist() == post.tolist() == list(range(7))
    assert np.all(w == 0.1)
    assert np.all(d == 1.0)


def test_all_to_all_without_self_connections() -> None:
    net = _net()
    a = net.population(5, IFCurrExp())
    pre, post, _, _ = net.project(a, a, AllToAll(allow_self_connections=False)).synapses(0.1)
    assert pre.size == 20
    assert not np.any(pre == post)


def test_fixed_in_degree_with_multapses_no_autapses() -> None:
    net = _net()
    a = net.population(50, IFCurrExp())
    conn = FixedNumberPre(30, allow_self_connections=False, with_replacement=True)
    pre, post, _, _ = net.project(a, a, conn).synapses(0.1)
    assert np.bincount(post, minlength=50).tolist() == [30] * 50
    assert not np.any(pre == post)
    assert pre.max() < 50


def test_fixed_in_degree_without_replacement_has_distinct_sources() -> None:
    net = _net()
    a = net.population(20, IFCurrExp())
    b = net.population(10, IFCurrExp())
    pre, post, _, _ = net.project(a, b, FixedNumberPre(20)).synapses(0.1)
    for target in range(10):
        assert sorted(pre[post == target].tolist()) == list(range(20))


def test_fixed_in_degree_too_many_sources_is_an_error() -> None:
    net = _net()
    a = net.population(5, IFCurrExp())
    with pytest.raises(NetworkError, match="fixed in-degree 6"):
        net.project(a, a, FixedNumberPre(6)).synapses(0.1)


def test_fixed_probability_is_seeded_and_roughly_right() -> None:
    counts = []
    for _ in range(2):
        net = _net()
        a = net.population(200, IFCurrExp())
        pre, _, _, _ = net.project(a, a, FixedProbability(0.1)).synapses(0.1)
        counts.append(pre.size)
    assert counts[0] == counts[1]
    assert 3400 < counts[0] < 4600


def test_from_list_carries_weights_and_delays() -> None:
    net = _net()
    a = net.population(3, IFCurrExp())
    conn = FromList(((0, 1, 0.5, 2.0), (2, 0, 0.25, 0.3)))
    pre, post, w, d = net.project(a, a, conn).synapses(0.1)
    assert pre.tolist() == [0, 2]
    assert post.tolist() == [1, 0]
    assert w.tolist() == [0.5, 0.25]
    assert d.tolist() == [2.0, 0.3]


def test_from_arrays_out_of_range_is_an_error() -> None:
    net = _net()
    a = net.population(3, IFCurrExp(), "a")
    proj = net.project(a, a, FromArrays(np.array([0, 3]), np.array([1, 1])))
    with pytest.raises(NetworkError, match="outside 'a'"):
        proj.synapses(0.1)


def test_inhibitory_weights_are_negative_and_stored_as_magnitudes() -> None:
    net = _net()
    a = net.population(2, IFCurrExp())
    good = net.project(a, a, OneToOne(), StaticSynapse(-0.4, 1.0), receptor_type="inhibitory")
    assert good.synapses(0.1)[2].tolist() == [0.4, 0.4]
    bad = net.project(a, a, OneToOne(), StaticSynapse(0.4, 1.0), receptor_type="inhibitory")
    with pytest.raises(NetworkError, match=r"weight 0\.4 > 0"):
        bad.synapses(0.1)


def test_delay_below_one_step_is_an_error() -> None:
    net = _net()
    a = net.population(2, IFCurrExp())
    proj = net.project(a, a, OneToOne(), StaticSynapse(0.1, 0.05))
    with pytest.raises(NetworkError, match=r"delay 0\.05 ms"):
        proj.synapses(0.1)


def test_sources_cannot_be_targets() -> None:
    net = _net()
    a = net.population(2, IFCurrExp())
    s = net.population(2, SpikeSourcePoisson(rate=10.0), "src")
    with pytest.raises(NetworkError, match="'src' is a SpikeSourcePoisson"):
        net.project(a, s, OneToOne())


def test_duplicate_labels_and_bad_parameters() -> None:
    net = _net()
    net.population(2, IFCurrExp(), "x")
    with pytest.raises(NetworkError, match="'x' is already used"):
        net.population(2, IFCurrExp(), "x")
    with pytest.raises(NetworkError, match="tau_m must be positive"):
        IFCurrExp(tau_m=0.0)
    with pytest.raises(NetworkError, match="rate"):
        SpikeSourcePoisson(rate=-1.0)


def test_recording_selection_and_errors() -> None:
    net = _net()
    a = net.population(10, IFCurrExp(), "a")
    a.record(["spikes", "v"], neurons=[3, 1, 3])
    assert a.recorded["v"].tolist() == [1, 3]
    s = net.population(2, SpikeSourceArray(spike_times=(1.0,)), "s")
    with pytest.raises(NetworkError, match="cannot record 'v'"):
        s.record("v")
    with pytest.raises(NetworkError, match="no neuron 10"):
        a.record("spikes", neurons=[10])
