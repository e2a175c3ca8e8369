"""sPyNNaker's plotting helpers, for portal scripts that import them.

`spynnaker.spynnaker_plotting` and `spynnaker8.spynnaker_plotting` (axes-level plots and
`SpynnakerPanel`, a PyNN `Panel` that also takes sPyNNaker 7's numpy arrays) and
`spynnaker.plot_utils` (`plot_spikes`, `heat_plot`, `line_plot` on whole figures) come
here through the batch runner's shims. The arrays are those of `neo_convertor`: spikes as
rows ``[neuron, time]``, signals as rows ``[neuron, time, value]``. The figure-level
functions end with ``plt.show()``, as sPyNNaker's do (nothing, under a batch job's Agg
backend: save the figure with ``plt.savefig`` to keep it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pyNN.utility.plotting import Panel, plt

from toolchain.pynn.neo_convertor import convert_analog_signal

__all__ = [
    "SpynnakerPanel",
    "heat_plot",
    "heat_plot_neo",
    "heat_plot_numpy",
    "line_plot",
    "plot_segment",
    "plot_spikes",
    "plot_spikes_numpy",
    "plot_spiketrains",
]


def plot_spiketrains(ax: Any, spiketrains: Sequence[Any], label: str = "", **options: Any) -> None:
    """A raster of spike trains: one row per train (its neuron index)."""
    ax.set_xlim(0, max((float(train.t_stop) for train in spiketrains), default=1.0))
    for n, train in enumerate(spiketrains):
        index = train.annotations.get("source_index", n)
        ax.plot(train.magnitude, np.full(len(train), index), ".", label=label or None, **options)
    ax.set_xlabel("Time (ms)")
    ax.set_ylabel("Neuron index")


def plot_spikes_numpy(ax: Any, spikes: npt.NDArray[Any], label: str = "", **options: Any) -> None:
    """A raster of spikes given as rows ``[neuron, time]``."""
    ax.plot(spikes[:, 1], spikes[:, 0], ".", label=label or None, **options)
    ax.set_xlabel("Time (ms)")
    ax.set_ylabel("Neuron index")


def heat_plot_numpy(ax: Any, data: npt.NDArray[Any], label: str = "", **options: Any) -> None:
    """A heat map of rows ``[neuron, time, value]``: neurons down, time across."""
    neurons = data[:, 0].astype(int)
    times = np.unique(data[:, 1])
    columns = np.searchsorted(times, data[:, 1])
    image = np.full((int(neurons.max(initial=-1)) + 1, len(times)), np.nan)
    image[neurons, columns] = data[:, 2]
    extent = (float(times[0]), float(times[-1]), image.shape[0] - 0.5, -0.5) if len(times) else None
    shown = ax.imshow(image, cmap="hot", interpolation="none", aspect="auto", extent=extent)
    ax.figure.colorbar(shown, ax=ax, label=label or None)
    ax.set_xlabel("Time (ms)")
    ax.set_ylabel("Neuron index")
    if options.get("title"):
        ax.set_title(options["title"])


def heat_plot_neo(ax: Any, signal: Any, label: str = "", **options: Any) -> None:
    """A heat map of one recorded neo signal (v, gsyn_exc, gsyn_inh)."""
    heat_plot_numpy(ax, convert_analog_signal(signal), label or signal.name or "", **options)


def plot_segment(axes: Any, segment: Any, label: str = "", **options: Any) -> None:
    """A run's spikes as a raster, or else its first recorded signal as a heat map."""
    if segment.spiketrains:
        plot_spiketrains(axes, segment.spiketrains, label, **options)
    elif segment.analogsignals:
        heat_plot_neo(axes, segment.analogsignals[0], label, **options)
    else:
        raise ValueError("the segment holds no spikes and no signals to plot")


class SpynnakerPanel(Panel):  # type: ignore[misc]
    """PyNN's `Panel` that also draws sPyNNaker 7's numpy arrays: rows ``[neuron, time]``
    as a spike raster, rows ``[neuron, time, value]`` as a heat map."""

    def plot(self, axes: Any) -> None:
        labels = self.data_labels if isinstance(self.data_labels, list) else None
        for n, datum in enumerate(self.data):
            label = labels[n] if labels is not None and n < len(labels) else ""
            if isinstance(datum, np.ndarray) and datum.ndim == 2 and datum.shape[1] == 2:
                plot_spikes_numpy(axes, datum, label or "")
            elif isinstance(datum, np.ndarray) and datum.ndim == 2 and datum.shape[1] == 3:
                heat_plot_numpy(axes, datum, label or "")
            else:
                Panel(datum, **self.options).plot(axes)
        for key in ("xlabel", "ylabel", "title"):
            if key in self.options and isinstance(self.options[key], str):
                getattr(axes, f"set_{key}")(self.options[key])


def _grid(n: int) -> tuple[int, int]:
    columns = min(n, 3) if n != 4 else 2
    return (n + columns - 1) // columns, columns


def _sets(data: Any) -> list[npt.NDArray[Any]]:
    return [data] if isinstance(data, np.ndarray) else list(data)


def _panels(data_sets: Any, title: str | None, what: str, draw: Any) -> None:
    """`draw(axes, array)` for each non-empty array in a grid of subplots, then show."""
    sets = [np.asarray(single) for single in _sets(data_sets) if len(single)]
    if not sets:
        print(f"no {what} to plot" + ("" if title is None else f" for {title}"))
        return
    rows, columns = _grid(len(sets))
    for n, single in enumerate(sets):
        draw(plt.subplot(rows, columns, n + 1), single)
    if title is not None:
        plt.title(title)
    plt.show()


def plot_spikes(spikes: Any, title: str = "spikes") -> None:
    """Figure-level raster of one or several spike arrays (rows ``[neuron, time]``)."""
    _panels(spikes, title, "spikes", plot_spikes_numpy)


def heat_plot(data_sets: Any, ylabel: str | None = None, title: str | None = None) -> None:
    """Figure-level heat maps of one or several signal arrays (rows ``[neuron, time, v]``)."""

    def draw(ax: Any, data: npt.NDArray[Any]) -> None:
        heat_plot_numpy(ax, data)
        if ylabel is not None:
            ax.set_ylabel(ylabel)

    _panels(data_sets, title, "data", draw)


def line_plot(data_sets: Any, title: str | None = None) -> None:
    """Figure-level line plots of one or several signal arrays, a line per neuron."""

    def draw(ax: Any, data: npt.NDArray[Any]) -> None:
        for neuron in np.unique(data[:, 0]):
            mine = data[data[:, 0] == neuron]
            ax.plot(mine[:, 1], mine[:, 2])
        ax.set_xlabel("Time (ms)")

    _panels(data_sets, title, "data", draw)
