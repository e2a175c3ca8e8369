"""sPyNNaker's neo_convertor and plotting helpers, on the backend's own recorded data."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import matplotlib
import numpy as np
import pytest

from toolchain.pynn import neo_convertor, spynnaker_plotting

matplotlib.use("Agg")


def _recorded(sim: ModuleType) -> tuple[object, object]:
    sim.setup(timestep=1.0)
    pop = sim.Population(4, sim.IF_curr_exp(i_offset=1.0))
    pop.record(["spikes", "v", "gsyn_exc", "gsyn_inh"])
    sim.run(60)
    return pop, pop.get_data()


def test_spikes_and_signals_come_in_spynnaker_7s_layout(sim: ModuleType) -> None:
    pop, data = _recorded(sim)
    segment = data.segments[0]
    spikes = neo_convertor.convert_spikes(data)
    expected = sorted(
        (float(n), float(t)) for n, train in enumerate(segment.spiketrains) for t in train.magnitude
    )
    assert sorted(map(tuple, spikes.tolist())) == expected
    assert neo_convertor.count_spikes(data) == len(expected) > 0
    v = neo_convertor.convert_data(data, "v")
    (signal,) = segment.filter(name="v")
    n_samples = signal.shape[0]
    assert v.shape == (4 * n_samples, 3)
    # grouped by neuron: neuron 1's samples follow neuron 0's
    assert v[n_samples, 0] == 1.0
    assert v[n_samples : 2 * n_samples, 2].tolist() == signal.magnitude[:, 1].tolist()
    assert v[:n_samples, 1].tolist() == signal.times.magnitude.tolist()
    gsyn = neo_convertor.convert_gsyn(data, data)
    assert gsyn.shape == (4 * n_samples, 4)
    assert [a.shape for a in neo_convertor.convert_v_list(data)] == [v.shape]
    # a view's neurons keep their indices in the population, as sPyNNaker's
    view_spikes = neo_convertor.convert_spikes(pop[2:4].get_data())
    assert set(view_spikes[:, 0].tolist()) == {2.0, 3.0}
    with pytest.raises(ValueError, match="no run 1"):
        neo_convertor.convert_spikes(data, run=1)
    with pytest.raises(ValueError, match="not 'all'"):
        neo_convertor.convert_data(data, "all")


def test_the_plotting_helpers_draw_the_arrays_and_the_neo_data(
    sim: ModuleType, tmp_path: Path
) -> None:
    from pyNN.utility.plotting import Figure

    _, data = _recorded(sim)
    segment = data.segments[0]
    spikes = neo_convertor.convert_spikes(data)
    v = neo_convertor.convert_data(data, "v")
    Figure(
        spynnaker_plotting.SpynnakerPanel(spikes, xlabel="Time (ms)"),
        spynnaker_plotting.SpynnakerPanel(v),
        spynnaker_plotting.SpynnakerPanel(segment.spiketrains),
    ).save(str(tmp_path / "panels.png"))
    assert (tmp_path / "panels.png").read_bytes()[:4] == b"\x89PNG"
    import matplotlib.pyplot as plt

    plt.figure()
    spynnaker_plotting.plot_spikes(spikes)
    (raster,) = plt.gcf().axes
    ((times, neurons),) = [line.get_data() for line in raster.get_lines()]
    assert sorted(zip(neurons, times, strict=True)) == sorted(map(tuple, spikes.tolist()))
    plt.figure()
    spynnaker_plotting.heat_plot(v, ylabel="neuron")
    assert plt.gcf().axes[0].get_ylabel() == "neuron"
    plt.figure()
    spynnaker_plotting.line_plot(v)
    (lines,) = plt.gcf().axes
    assert len(lines.get_lines()) == 4  # one line per neuron
    assert np.allclose(lines.get_lines()[0].get_ydata(), v[v[:, 0] == 0, 2])
    plt.close("all")
