"""sPyNNaker's `neo_convertor`: recorded neo data as the numpy arrays of sPyNNaker 7 scripts.

Portal scripts import it as `spynnaker.pyNN.utilities.neo_convertor` (or the `spynnaker8`
name); the batch runner's shims point both here. The layouts are sPyNNaker's:

- spikes: one row per spike, ``[neuron index, time in ms]``;
- a signal (``v``, ``gsyn_exc``, ``gsyn_inh``): one row per neuron and sample, grouped by
  neuron, ``[neuron index, time in ms, value]``;
- both conductances: ``[neuron index, time in ms, gsyn_exc, gsyn_inh]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import quantities

__all__ = [
    "convert_analog_signal",
    "convert_data",
    "convert_data_list",
    "convert_gsyn",
    "convert_gsyn_exc_list",
    "convert_gsyn_inh_list",
    "convert_spikes",
    "convert_spiketrains",
    "convert_v_list",
    "count_spikes",
    "count_spiketrains",
]


def _neuron_indices(signal: Any) -> npt.NDArray[Any]:
    """The population indices of a signal's columns (PyNN's channel_index annotation)."""
    for key in ("channel_index", "source_index"):
        found = signal.array_annotations.get(key)
        if found is not None and len(found) == signal.shape[1]:
            return np.asarray(found)
    return np.arange(signal.shape[1])


def convert_analog_signal(signal: Any, time_unit: Any = quantities.ms) -> npt.NDArray[Any]:
    """One recorded signal as rows ``[neuron, time, value]``, neuron by neuron."""
    times = signal.times.rescale(time_unit).magnitude
    neurons = _neuron_indices(signal)
    values = np.asarray(signal.magnitude)
    return np.column_stack(
        (np.repeat(neurons, len(times)), np.tile(times, len(neurons)), values.T.reshape(-1))
    )


def _segment(data: Any, run: int) -> Any:
    if not 0 <= run < len(data.segments):
        raise ValueError(
            f"the data has {len(data.segments)} runs (segments), so there is no run {run}"
            " (runs count from 0)"
        )
    return data.segments[run]


def convert_data(data: Any, name: str, run: int = 0) -> npt.NDArray[Any]:
    """A neo Block's `name` (``spikes``, ``v``, ``gsyn_exc``, ``gsyn_inh``) of one run."""
    if name == "all":
        raise ValueError("convert one recorded variable at a time, not 'all'")
    segment = _segment(data, run)
    if name == "spikes":
        return convert_spiketrains(segment.spiketrains)
    found = segment.filter(name=name)
    if not found:
        raise ValueError(f"run {run} recorded no {name!r}")
    return convert_analog_signal(found[0])


def convert_data_list(
    data: Any, name: str, runs: Sequence[int] | None = None
) -> list[npt.NDArray[Any]]:
    """`convert_data` of each run in `runs` (all of them if None)."""
    return [
        convert_data(data, name, run)
        for run in (range(len(data.segments)) if runs is None else runs)
    ]


def convert_v_list(data: Any, runs: Sequence[int] | None = None) -> list[npt.NDArray[Any]]:
    """The membrane voltage of each run."""
    return convert_data_list(data, "v", runs)


def convert_gsyn_exc_list(data: Any, runs: Sequence[int] | None = None) -> list[npt.NDArray[Any]]:
    """The excitatory synaptic input of each run."""
    return convert_data_list(data, "gsyn_exc", runs)


def convert_gsyn_inh_list(data: Any, runs: Sequence[int] | None = None) -> list[npt.NDArray[Any]]:
    """The inhibitory synaptic input of each run."""
    return convert_data_list(data, "gsyn_inh", runs)


def convert_gsyn(gsyn_exc: Any, gsyn_inh: Any) -> npt.NDArray[Any]:
    """Rows ``[neuron, time, gsyn_exc, gsyn_inh]`` of the first run (the two Blocks may be
    one and the same)."""
    exc = convert_data(gsyn_exc, "gsyn_exc")
    inh = convert_data(gsyn_inh, "gsyn_inh")
    if exc.shape != inh.shape or not np.array_equal(exc[:, :2], inh[:, :2]):
        raise ValueError("gsyn_exc and gsyn_inh were not recorded for the same neurons and times")
    return np.column_stack((exc, inh[:, 2]))


def convert_spiketrains(spiketrains: Sequence[Any]) -> npt.NDArray[Any]:
    """Spike trains as rows ``[neuron, time in ms]``, train by train."""
    if len(spiketrains) == 0:
        return np.empty((0, 2))
    neurons = [
        np.full(len(train), train.annotations.get("source_index", n), dtype=float)
        for n, train in enumerate(spiketrains)
    ]
    times = [train.rescale(quantities.ms).magnitude for train in spiketrains]
    return np.column_stack((np.concatenate(neurons), np.concatenate(times)))


def convert_spikes(data: Any, run: int = 0) -> npt.NDArray[Any]:
    """The spikes of one run of a neo Block."""
    return convert_spiketrains(_segment(data, run).spiketrains)


def count_spiketrains(spiketrains: Sequence[Any]) -> int:
    """How many spikes the trains hold in all."""
    return sum(len(train) for train in spiketrains)


def count_spikes(data: Any) -> int:
    """How many spikes the first run of a neo Block holds."""
    return count_spiketrains(_segment(data, 0).spiketrains)
