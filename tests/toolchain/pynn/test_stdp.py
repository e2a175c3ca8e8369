"""STDP through the PyNN API as sPyNNaker scripts write it, the learned weights read back."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest

from toolchain.pynn.errors import NotSupportedError


def _pair(sim: ModuleType, weight_dependence: object) -> tuple[object, object]:
    """A pre spike at 95 ms, the cell made to fire at 101 ms, another pre spike at 500 ms."""
    sim.setup(timestep=1.0)
    pre = sim.Population(1, sim.SpikeSourceArray(spike_times=[95.0, 500.0]), label="pre")
    drive = sim.Population(1, sim.SpikeSourceArray(spike_times=[100.0]), label="drive")
    cell = sim.Population(1, sim.IF_curr_exp(tau_syn_E=1.0, tau_refrac=1.0), label="cell")
    cell.record("spikes")
    sim.Projection(drive, cell, sim.OneToOneConnector(), sim.StaticSynapse(weight=30.0, delay=1))
    stdp = sim.STDPMechanism(
        timing_dependence=sim.SpikePairRule(
            tau_plus=16.0, tau_minus=33.0, A_plus=0.25, A_minus=0.2
        ),
        weight_dependence=weight_dependence,
        weight=1.0,
        delay=3.0,
    )
    learning = sim.Projection(pre, cell, sim.OneToOneConnector(), stdp)
    return cell, learning


@pytest.mark.parametrize("rule", ["additive", "multiplicative"])
def test_get_weight_after_a_run_reads_what_the_pair_rule_learned(
    sim: ModuleType, rule: str
) -> None:
    dependence = (
        sim.AdditiveWeightDependence(w_min=0.0, w_max=2.0)
        if rule == "additive"
        else sim.MultiplicativeWeightDependence(w_min=0.0, w_max=2.0)
    )
    cell, learning = _pair(sim, dependence)
    before = learning.get("weight", format="list")
    sim.run(520)
    (t_post,) = cell.get_data("spikes").segments[0].spiketrains[0].magnitude.tolist()
    ((_, _, w),) = learning.get("weight", format="list")
    # potentiation at the 500 ms pre spike: post at t_post, seen 3 ms (the delay) later
    dt = t_post + 3.0 - 95.0
    expected = 1.0 + 0.25 * math.exp(-dt / 16.0) * (1.0 if rule == "additive" else 2.0 - 1.0)
    assert w == pytest.approx(expected, abs=0.25 * 2 / 2048 + 2.0**-8)
    ((_, _, w0),) = before
    assert w0 == pytest.approx(1.0, abs=2.0**-8)
    assert np.asarray(learning.get("weight", format="array"))[0, 0] == w


def test_rules_the_chip_model_lacks_are_refused(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    with pytest.raises(NotSupportedError, match="dendritic_delay_fraction"):
        sim.STDPMechanism(
            timing_dependence=sim.SpikePairRule(),
            weight_dependence=sim.AdditiveWeightDependence(),
            dendritic_delay_fraction=0.5,
        )
    with pytest.raises(NotSupportedError, match="AdditivePotentiationMultiplicativeDepression"):
        sim.AdditivePotentiationMultiplicativeDepression()


def test_an_stdp_parameter_drawn_per_synapse_is_refused_by_name(sim: ModuleType) -> None:
    # It used to fail inside run() with "float() argument must be ... RandomDistribution".
    sim.setup(timestep=1.0)
    pre = sim.Population(2, sim.SpikeSourceArray(spike_times=[5.0]))
    cell = sim.Population(2, sim.IF_curr_exp())
    stdp = sim.STDPMechanism(
        timing_dependence=sim.SpikePairRule(
            tau_plus=sim.RandomDistribution("uniform", (10.0, 20.0)), tau_minus=20.0
        ),
        weight_dependence=sim.AdditiveWeightDependence(w_min=0.0, w_max=2.0),
        weight=1.0,
    )
    sim.Projection(pre, cell, sim.OneToOneConnector(), stdp)
    with pytest.raises(NotSupportedError, match="tau_plus varying across synapses"):
        sim.run(10)


def test_a_reset_gives_back_the_initial_weights_at_once(sim: ModuleType) -> None:
    # After reset() get("weight") still answered the learned weights, while the next run
    # started from the initial ones.
    _, learning = _pair(sim, sim.AdditiveWeightDependence(w_min=0.0, w_max=2.0))
    ((_, _, initial),) = learning.get("weight", format="list")
    sim.run(520)
    ((_, _, learned),) = learning.get("weight", format="list")
    assert learned != initial
    sim.reset()
    ((_, _, after_reset),) = learning.get("weight", format="list")
    assert after_reset == initial
    sim.run(520)
    ((_, _, relearned),) = learning.get("weight", format="list")
    assert relearned == learned  # the same run again learns the same
