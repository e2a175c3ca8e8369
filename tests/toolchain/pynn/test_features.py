"""The PyNN API pieces sPyNNaker scripts use, and the hardware facts that show through."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pyNN.random
import pyNN.space
import pytest
from pyNN import errors as pynn_errors

from toolchain.errors import ResourceError
from toolchain.pynn.errors import NotSupportedError


def _cells(sim: ModuleType, n: int, label: str = "cells", **params: float) -> object:
    return sim.Population(n, sim.IF_curr_exp(**params), label=label)


def test_name_says_what_ran_and_the_state_queries_answer(sim: ModuleType) -> None:
    assert sim.setup(timestep=0.5, min_delay="auto", n_boards_required=1, time_scale_factor=10) == 0
    assert "virtual" in sim.name()
    assert "allotment" in sim.name()
    assert sim.get_time_step() == 0.5
    assert sim.get_min_delay() == 0.5
    assert sim.num_processes() == 1
    assert sim.rank() == 0
    _cells(sim, 10)
    machine = sim.get_machine()
    assert machine.width_chips == 8
    assert machine.height_chips == 8


def test_unsupported_features_raise_naming_the_feature_and_what_is_supported(
    sim: ModuleType,
) -> None:
    sim.setup(timestep=1.0)
    with pytest.raises(NotSupportedError, match=r"IF_cond_alpha.*IF_curr_exp, IF_cond_exp"):
        sim.IF_cond_alpha()
    with pytest.raises(
        NotSupportedError, match=r"Vogels2011Rule.*StaticSynapse, and STDPMechanism"
    ):
        sim.Vogels2011Rule()
    with pytest.raises(NotSupportedError, match=r"timing dependence NoneType.*SpikePairRule"):
        sim.STDPMechanism()
    with pytest.raises(NotSupportedError, match="DCSource"):
        sim.DCSource(amplitude=1.0)
    with pytest.raises(NotSupportedError, match=r"'spikes_per_second'.*seed"):
        sim.Population(1, sim.IF_curr_exp(), additional_parameters={"spikes_per_second": 5})
    drive = sim.Population(2, sim.SpikeSourcePoisson(rate=5.0), label="drive")
    with pytest.raises(NotSupportedError, match="spikes of a SpikeSourcePoisson"):
        drive.record("spikes")
    cells = _cells(sim, 2)
    with pytest.raises(NotSupportedError, match="excitatory receptor"):
        sim.Projection(
            drive,
            cells,
            sim.AllToAllConnector(),
            sim.StaticSynapse(weight=-1.0),
            receptor_type="excitatory",
        )


def test_one_to_one_between_one_neuron_populations_works_on_this_numpy(
    sim: ModuleType,
) -> None:
    # PyNN 0.13's own one-to-one path fails here on numpy >= 2.1
    sim.setup(timestep=1.0)
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[2.0]), label="src")
    cell = _cells(sim, 1)
    proj = sim.Projection(
        src,
        cell,
        sim.OneToOneConnector(),
        sim.StaticSynapse(weight=sim.RandomDistribution("uniform", (1, 2)), delay=2.0),
    )
    assert len(proj) == 1
    ((i, j, w, d),) = proj.get(["weight", "delay"], format="list")
    assert (i, j, d) == (0, 0, 2.0)
    assert 1.0 <= w <= 2.0


@pytest.mark.parametrize(
    ("connector", "expected"),
    [
        ("OneToOneConnector()", 20),
        ("AllToAllConnector(allow_self_connections=False)", 20 * 19),
        ("FixedProbabilityConnector(0.5, rng=sim.NumpyRNG(3))", None),
        ("FixedNumberPreConnector(4, rng=sim.NumpyRNG(3))", 80),
        ("FixedNumberPostConnector(3, rng=sim.NumpyRNG(3))", 60),
        ("FixedTotalNumberConnector(33, rng=sim.NumpyRNG(3))", 33),
        ("FromListConnector([(0, 1), (5, 2), (5, 3)])", 3),
        ("ArrayConnector(np.eye(20, dtype=bool))", 20),
        ("DistanceDependentProbabilityConnector('d < 2.5', rng=sim.NumpyRNG(3))", None),
    ],
)
def test_every_connector_builds_and_runs(
    sim: ModuleType, connector: str, expected: int | None
) -> None:
    sim.setup(timestep=1.0)
    cells = _cells(sim, 20, i_offset=1.0)
    proj = sim.Projection(
        cells,
        cells,
        eval(connector, {**vars(sim), "sim": sim, "np": np}),
        sim.StaticSynapse(weight=0.5, delay=3.0),
    )
    if expected is not None:
        assert len(proj) == expected
    else:
        assert 0 < len(proj) < 400
    if "Distance" in connector:
        pre, post = np.array(proj.get("weight", format="list"))[:, :2].T
        assert np.all(np.abs(pre - post) < 2.5)  # a line with 1 unit between neurons
    cells.record("spikes")
    sim.run(50.0)
    assert sum(len(s) for s in cells.get_data().segments[0].spiketrains) > 0


def test_from_file_connector_and_projection_save_round_trip(sim: ModuleType, workdir: Path) -> None:
    sim.setup(timestep=1.0)
    a, b = _cells(sim, 5, "a"), _cells(sim, 5, "b")
    weights = np.linspace(0.1, 0.5, 5)
    first = sim.Projection(
        a, b, sim.OneToOneConnector(), sim.StaticSynapse(weight=weights, delay=[1, 2, 3, 4, 5])
    )
    first.save(["weight", "delay"], str(workdir / "conns.txt"), format="list")
    second = sim.Projection(b, a, sim.FromFileConnector(str(workdir / "conns.txt")))
    assert len(second) == 5
    got = sorted(second.get(["weight", "delay"], format="list"))
    np.testing.assert_allclose([g[2] for g in got], weights)
    assert [g[3] for g in got] == [1.0, 2.0, 3.0, 4.0, 5.0]
    w_array = first.get("weight", format="array")
    assert w_array.shape == (5, 5)
    assert np.isnan(w_array[0, 1])


def test_weights_read_back_after_a_run_are_the_ring_buffers_quantised_ones(
    sim: ModuleType,
) -> None:
    sim.setup(timestep=1.0)
    src = sim.Population(3, sim.SpikeSourceArray(spike_times=[1.0]), label="src")
    cell = _cells(sim, 3)
    asked = [0.1234567, 1.0, 3.3333333]
    proj = sim.Projection(src, cell, sim.OneToOneConnector(), sim.StaticSynapse(weight=asked))
    np.testing.assert_array_equal(proj.get("weight", format="array").diagonal(), asked)
    sim.run(10.0)
    stored = proj.get("weight", format="array").diagonal()
    assert not np.array_equal(stored, asked)
    # one delay for all synapses: the bound is the worst case, in-degree 1 x 3.33 nA, so
    # the shift is ceil(log2 3.33) = 2 and a weight is a multiple of 2 ** (2 - 15) nA
    step = 2.0**-13
    np.testing.assert_allclose(stored, np.round(np.array(asked) / step) * step)


def test_positive_and_negative_inhibitory_weights_inhibit(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[5.0]), label="src")
    cells = _cells(sim, 2)
    sim.Projection(
        src,
        cells[0:1],
        sim.OneToOneConnector(),
        sim.StaticSynapse(weight=2.0),
        receptor_type="inhibitory",
    )
    sim.Projection(src, cells[1:2], sim.OneToOneConnector(), sim.StaticSynapse(weight=-2.0))
    cells.record(["v", "gsyn_inh"])
    sim.run(20.0)
    seg = cells.get_data().segments[0]
    v = seg.filter(name="v")[0].magnitude
    assert v[:, 0].min() < -66.0
    np.testing.assert_allclose(v[:, 0], v[:, 1])
    gsyn = seg.filter(name="gsyn_inh")[0]
    assert str(gsyn.units.dimensionality) == "nA"
    assert gsyn.magnitude[:, 0].max() > 1.0


def test_if_cond_exp_runs_with_conductance_weights(sim: ModuleType) -> None:
    sim.setup(timestep=0.1)
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[2.0, 2.5, 3.0]), label="src")
    cells = sim.Population(2, sim.IF_cond_exp(), label="cond")
    sim.Projection(src, cells[0:1], sim.OneToOneConnector(), sim.StaticSynapse(weight=0.05))
    sim.Projection(
        src,
        cells[1:2],
        sim.OneToOneConnector(),
        sim.StaticSynapse(weight=0.05),
        receptor_type="inhibitory",
    )
    cells.record(["v", "gsyn_exc"])
    sim.run(20.0)
    seg = cells.get_data().segments[0]
    v = seg.filter(name="v")[0].magnitude
    assert v[:, 0].max() > -64.0  # excitation depolarises towards e_rev_E = 0 mV
    assert v[:, 1].min() < -65.5  # inhibition hyperpolarises towards e_rev_I = -70 mV
    assert str(seg.filter(name="gsyn_exc")[0].units.dimensionality) == "uS"
    with pytest.raises(pynn_errors.ConnectionError, match="positive for conductance"):
        sim.Projection(
            src,
            cells,
            sim.AllToAllConnector(),
            sim.StaticSynapse(weight=-0.1),
            receptor_type="inhibitory",
        )


def test_sampling_interval_initialize_and_views(sim: ModuleType) -> None:
    sim.setup(timestep=0.1)
    cells = _cells(sim, 10, v_rest=-65.0, tau_m=10.0)
    cells.initialize(v=np.linspace(-70.0, -60.0, 10))
    cells[5:].initialize(v=-50.5)
    cells[::2].record("v", sampling_interval=1.0)
    sim.run(20.0)
    v = cells.get_data().segments[0].filter(name="v")[0]
    assert v.shape == (20, 5)
    assert float(v.sampling_period) == pytest.approx(1.0)
    np.testing.assert_allclose(v.magnitude[0], [-70.0, -67.777, -65.555, -50.5, -50.5], atol=1e-3)
    assert list(v.array_annotations["channel_index"]) == [0, 2, 4, 6, 8]
    assert cells.get("tau_m") == 10.0
    cells[0:2].set(tau_m=np.array([5.0, 6.0]))
    np.testing.assert_array_equal(cells.get("tau_m")[:3], [5.0, 6.0, 10.0])


def test_initialize_between_runs_needs_a_reset_and_applies_after_it(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    cells = _cells(sim, 2)
    cells.record("v")
    sim.run(5.0)
    with pytest.raises(NotSupportedError, match=r"initialize\(\) between runs"):
        cells.initialize(v=-55.0)
    sim.reset()
    cells.initialize(v=-55.0)
    sim.run(5.0)
    first, second = cells.get_data().segments
    assert first.filter(name="v")[0].magnitude[0, 0] == pytest.approx(-65.0)
    assert second.filter(name="v")[0].magnitude[0, 0] == pytest.approx(-55.0)


def test_population_seed_makes_poisson_spikes_repeatable(sim: ModuleType) -> None:
    def counts(seed: int) -> list[int]:
        sim.setup(timestep=1.0)
        cells = _cells(sim, 30)
        drive = sim.Population(30, sim.SpikeSourcePoisson(rate=40.0), label="drive", seed=seed)
        sim.Projection(drive, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=20.0))
        cells.record("spikes")
        sim.run(500.0)
        return [len(s) for s in cells.get_data().segments[0].spiketrains]

    assert counts(7) == counts(7)
    assert counts(7) != counts(8)


def test_delays_are_whole_steps_and_past_the_extensions_reach_the_error_names_them(
    sim: ModuleType,
) -> None:
    # 256 neurons per core leave 32 delay slots on a core; extensions add up to 8 x 32
    sim.setup(timestep=1.0)
    src = sim.Population(256, sim.SpikeSourceArray(spike_times=[0.0]), label="src")
    cells = _cells(sim, 256)
    proj = sim.Projection(
        src, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0, delay=2.6)
    )
    assert proj.get("delay", format="list")[0][2] == 3.0
    far = sim.Projection(
        src, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0, delay=250.0)
    )
    assert len(far) == 256
    sim.run(1.0)
    synapses = (next(Path("reports").iterdir()) / "synapses.rpt").read_text()
    assert "delay extension of src: 7 stages of 32 steps" in synapses
    sim.setup(timestep=1.0, max_delay=1000.0)
    src = sim.Population(256, sim.SpikeSourceArray(spike_times=[0.0]), label="src")
    cells = _cells(sim, 256, label="far_target")
    sim.Projection(src, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0, delay=400))
    with pytest.raises(ResourceError, match=r"400 steps.*'far_target'"):
        sim.run(1.0)
    with pytest.raises(NotSupportedError, match="max_delay"):
        sim.Projection(
            src, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0, delay=2000)
        )


def test_neurons_per_core_and_dtcm_limits_show_through(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    sim.set_number_of_neurons_per_core(sim.IF_curr_exp, 50)
    cells = _cells(sim, 120, label="wide")
    sim.run(1.0)
    placements = next(Path("reports").iterdir()) / "placements.rpt"
    assert placements.read_text().count("wide IF_curr_exp") == 3
    sim.setup(timestep=1.0)
    sim.set_number_of_neurons_per_core(sim.IF_curr_exp, 1000)
    _cells(sim, 1000, label="crowded")
    with pytest.raises(ResourceError, match=r"'crowded'.*dtcm"):
        sim.run(1.0)
    assert cells is not None


def test_adding_a_population_after_a_run_needs_a_reset(sim: ModuleType) -> None:
    from toolchain.pynn.errors import RunError

    sim.setup(timestep=1.0)
    _cells(sim, 2)
    sim.run(10.0)
    _cells(sim, 2, label="late")
    with pytest.raises(RunError, match="reset"):
        sim.run(10.0)
    sim.reset()
    sim.run(10.0)
    assert sim.get_current_time() == 10.0


def test_get_data_writes_files_through_neo(sim: ModuleType, workdir: Path) -> None:
    sim.setup(timestep=1.0)
    cells = _cells(sim, 3, i_offset=2.0)
    cells.record(["spikes", "v"])
    sim.run(30.0)
    cells.write_data(str(workdir / "cells.pkl"))
    assert (workdir / "cells.pkl").stat().st_size > 0
    assert cells.mean_spike_count() > 0
    assert isinstance(pynn_errors.NonExistentParameterError, type)


def test_if_curr_delta_jumps_v_by_the_weight_over_cm(sim: ModuleType) -> None:
    sim.setup(timestep=0.1)
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[2.0]), label="src")
    cells = sim.Population(1, sim.IF_curr_delta(cm=2.0), label="delta")
    sim.Projection(src, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0, delay=1.0))
    cells.record("v")
    sim.run(10.0)
    v = cells.get_data().segments[0].filter(name="v")[0].magnitude[:, 0]
    # 1 nA for one step into 2 nF: about 0.5 mV at once, then the leak
    jump = np.diff(v).max()
    assert jump == pytest.approx(0.5, abs=0.01)
    assert int(np.argmax(np.diff(v))) == 30


def test_if_curr_alpha_defaults_and_charge(sim: ModuleType) -> None:
    sim.setup(timestep=0.1)
    cell = sim.IF_curr_alpha()
    assert cell.parameter_space["tau_syn_E"].base_value == 0.5  # sPyNNaker's and PyNN's
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[2.0]), label="src")
    cells = sim.Population(1, cell, label="alpha")
    sim.Projection(src, cells, sim.OneToOneConnector(), sim.StaticSynapse(weight=1.0, delay=1.0))
    cells.record(["v", "gsyn_exc"])
    sim.run(20.0)
    seg = cells.get_data().segments[0]
    current = seg.filter(name="gsyn_exc")[0].magnitude[:, 0]
    # w (t / tau**2) e^(-t / tau) carries w nA ms: 1 nA ms over the run
    assert current.sum() * 0.1 == pytest.approx(1.0, rel=0.02)
    assert str(seg.filter(name="gsyn_exc")[0].units.dimensionality) == "nA"


def test_izhikevich_spikes_regularly_with_receptor_currents(sim: ModuleType) -> None:
    sim.setup(timestep=0.1)
    cells = sim.Population(2, sim.Izhikevich(i_offset=[10.0, 0.0]), label="izk")
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[5.0, 5.5, 6.0]), label="src")
    sim.Projection(
        src, cells[1:2], sim.OneToOneConnector(), sim.StaticSynapse(weight=30.0, delay=1.0)
    )
    cells.initialize(u=-14.0)
    cells.record(["spikes", "v"])
    sim.run(200.0)
    trains = cells.get_data().segments[0].spiketrains
    # a constant 10 nA (PyNN's default a, b, c, d): a first burst, then a spike every 19 ms
    assert 10 <= len(trains[0]) <= 16
    isi = np.diff(np.asarray(trains[0]))[-6:]
    assert isi.max() - isi.min() < 0.5
    assert isi.mean() == pytest.approx(19.0, abs=1.0)
    # three 30 nA inputs through tau_syn_E = 5 ms drive the silent one over 30 mV once
    assert len(trains[1]) >= 1
    assert float(trains[1][0]) < 15.0


def test_izhikevich_cond_takes_conductance_weights(sim: ModuleType) -> None:
    sim.setup(timestep=0.1)
    src = sim.Population(1, sim.SpikeSourceArray(spike_times=[5.0]), label="src")
    cells = sim.Population(2, sim.Izhikevich_cond(), label="izc")
    sim.Projection(src, cells[0:1], sim.OneToOneConnector(), sim.StaticSynapse(weight=0.1))
    sim.Projection(
        src,
        cells[1:2],
        sim.OneToOneConnector(),
        sim.StaticSynapse(weight=0.1),
        receptor_type="inhibitory",
    )
    cells.record(["v", "gsyn_exc"])
    sim.run(20.0)
    seg = cells.get_data().segments[0]
    v = seg.filter(name="v")[0].magnitude
    assert v[:, 0].max() > v[:, 1].max() + 1.0  # e_rev_E = 0 mV pulls up, e_rev_I down
    assert str(seg.filter(name="gsyn_exc")[0].units.dimensionality) == "uS"
    with pytest.raises(pynn_errors.ConnectionError, match="positive for conductance"):
        sim.Projection(src, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=-0.1))


def test_the_forms_spynnakers_own_examples_use(sim: ModuleType) -> None:
    # As in sPyNNaker's PyNNExamples: a cell class without parameters, record("all"),
    # initial values as cell parameters, extra_models, max_rate for Poisson sources.
    sim.setup(timestep=1.0)
    plain = sim.Population(3, sim.IF_curr_exp, label="plain")
    started = sim.Population(2, sim.IF_curr_exp(v=-60.0, tau_m=10.0), label="started")
    izk = sim.Population(2, sim.Izhikevich(v=-75.0, u=0.0), label="izk")
    cond = sim.Population(2, sim.extra_models.Izhikevich_cond(), label="cond")
    delta = sim.Population(2, sim.extra_models.IFCurDelta(), label="delta")
    sim.Population(
        2, sim.SpikeSourcePoisson(rate=10.0), additional_parameters={"max_rate": 50.0, "seed": 1}
    )
    sim.Population(2, sim.SpikeSourcePoisson(rate=10.0), max_rate=50.0)
    assert started.get("tau_m") == 10.0
    for pop in (plain, started, izk, cond, delta):
        pop.record("all")
    sim.run(3)
    for pop, v0 in ((plain, -65.0), (started, -60.0), (izk, -75.0)):
        segment = pop.get_data().segments[0]
        assert sorted(s.name for s in segment.analogsignals) == ["gsyn_exc", "gsyn_inh", "v"]
        assert np.allclose(segment.filter(name="v")[0].magnitude[0], v0)
    assert sim.extra_models.IFCurDelta is sim.IF_curr_delta
    with pytest.raises(NotSupportedError, match=r"extra_models.Neuromodulation is not supported"):
        sim.extra_models.Neuromodulation()
    with pytest.raises(NotSupportedError, match=r"RandomSelection is not supported"):
        sim.RandomSelection()
    with pytest.raises(NotSupportedError, match=r"additional_parameters key 'spikes_per_second'"):
        sim.Population(1, sim.SpikeSourcePoisson(), spikes_per_second=5.0)


def test_a_run_of_part_of_a_step_is_rounded_up_and_said(
    sim: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    # As sPyNNaker does; it used to round to the nearest step (half to even), so that a
    # run(0.5) at 1 ms steps did nothing and said nothing.
    sim.setup(timestep=1.0)
    sim.Population(1, sim.IF_curr_exp())
    with caplog.at_level("WARNING", logger="allotment.pynn"):
        sim.run(10.5)
        assert sim.get_current_time() == 11.0
        sim.run(0.5)
        assert sim.get_current_time() == 12.0
    said = [r.getMessage() for r in caplog.records if "whole number of time steps" in r.message]
    assert said == [
        "the run time of 10.5 ms is not a whole number of time steps of 1 ms;"
        " rounded up to 11 steps (11 ms)",
        "the run time of 0.5 ms is not a whole number of time steps of 1 ms;"
        " rounded up to 1 step (1 ms)",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="allotment.pynn"):
        sim.run(3.0)  # whole steps: nothing to say
    assert sim.get_current_time() == 15.0
    assert not [r for r in caplog.records if "whole number" in r.getMessage()]


def test_a_view_gets_its_data_when_other_cells_record_other_variables(sim: ModuleType) -> None:
    # It failed with "zero-size array to reduction operation minimum" (PyNN asked for the
    # indices of no ids: the view's cells record no gsyn_exc, other cells do).
    sim.setup(timestep=1.0)
    pop = sim.Population(10, sim.IF_curr_exp(i_offset=1.0))
    pop[5:10].record(["spikes", "v"])
    pop[0:2].record("gsyn_exc")
    sim.run(50)
    segment = pop[5:10].get_data().segments[0]
    assert [(s.name, s.shape[1]) for s in segment.analogsignals] == [("v", 5)]
    assert len(segment.spiketrains) == 5
    assert all(len(train) > 0 for train in segment.spiketrains)
    segment = pop[0:2].get_data().segments[0]
    assert [(s.name, s.shape[1]) for s in segment.analogsignals] == [("gsyn_exc", 2)]
    assert len(segment.spiketrains) == 0


def test_spynnakers_other_top_level_names_exist_or_are_refused_by_name() -> None:
    # Each was an AttributeError, so a portal script stopped at its first use of one.
    import allotment.pynn as short

    for name in ("Grid2D", "Grid3D", "Line", "Cuboid", "Sphere", "RandomStructure", "distance"):
        assert getattr(short, name) is getattr(pyNN.space, name)
    assert short.space is pyNN.space
    assert short.random is pyNN.random
    assert short.GSLRNG is pyNN.random.GSLRNG
    with pytest.raises(NotSupportedError, match=r"external_devices\.SpikeInjector"):
        short.external_devices.SpikeInjector()
    with pytest.raises(NotSupportedError, match="SpiNNakerProjection"):
        short.SpiNNakerProjection()
    with pytest.raises(NotSupportedError, match="CSAConnector"):
        short.CSAConnector()
    with pytest.raises(NotSupportedError, match="SmallWorldConnector"):  # PyNN's has no body
        short.SmallWorldConnector(0.5, 0.1)


def test_neurons_per_core_between_runs_needs_a_reset(sim: ModuleType) -> None:
    # It was taken, and the next run() failed saying populations had been added.
    sim.setup(timestep=1.0)
    pop = sim.Population(20, sim.IF_curr_exp(i_offset=1.0))
    pop.record("spikes")
    sim.set_number_of_synapse_cores(sim.IF_curr_exp, 2)  # taken; changes nothing here
    with pytest.raises(NotSupportedError, match=r"set_allow_delay_extensions\(False\)"):
        sim.set_allow_delay_extensions(False)
    sim.set_allow_delay_extensions(True)
    sim.run(100)
    with pytest.raises(NotSupportedError, match="between runs without reset"):
        sim.set_number_of_neurons_per_core(sim.IF_curr_exp, 5)
    sim.reset()
    sim.set_number_of_neurons_per_core(sim.IF_curr_exp, 5)
    sim.run(100)
    first, second = pop.get_data().segments
    assert [len(t) for t in second.spiketrains] == [len(t) for t in first.spiketrains]
    assert sum(len(t) for t in second.spiketrains) > 0


def test_one_cells_initial_value_set_through_its_id_is_where_the_run_starts(
    sim: ModuleType,
) -> None:
    # PyNN's ID.set_initial_value wrote where the run never looked: get_initial_value
    # answered -60 and the cell started at -65.
    sim.setup(timestep=1.0)
    pop = sim.Population(3, sim.IF_curr_exp())
    pop.record("v")
    pop[1].set_initial_value("v", -60.0)
    assert [pop[i].get_initial_value("v") for i in range(3)] == [-65.0, -60.0, -65.0]
    sim.run(3)
    (v,) = pop.get_data().segments[0].filter(name="v")
    assert v.magnitude[0].tolist() == [-65.0, -60.0, -65.0]
    with pytest.raises(NotSupportedError, match="between runs without reset"):
        pop[0].set_initial_value("v", -55.0)
    sim.reset()
    pop[0].set_initial_value("v", -55.0)
    sim.run(3)
    (v,) = pop.get_data().segments[1].filter(name="v")
    assert v.magnitude[0].tolist() == [-55.0, -60.0, -65.0]


def test_a_listed_negative_weight_on_an_excitatory_receptor_is_refused_at_once(
    sim: ModuleType,
) -> None:
    # A list of weights of both signs was taken by Projection() and failed inside run(),
    # naming an internal projection label.
    sim.setup(timestep=1.0)
    src = sim.Population(2, sim.SpikeSourceArray(spike_times=[1.0]))
    cell = sim.Population(2, sim.IF_curr_exp())
    connections = [(0, 0, 1.0, 1.0), (1, 1, -1.0, 1.0)]
    with pytest.raises(NotSupportedError, match=r"negative weight -1\.0 on an excitatory"):
        sim.Projection(src, cell, sim.FromListConnector(connections), sim.StaticSynapse())
    inhibitory = sim.Projection(
        src,
        cell,
        sim.FromListConnector(connections),
        sim.StaticSynapse(),
        receptor_type="inhibitory",
    )
    assert len(inhibitory) == 2
