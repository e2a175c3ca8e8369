"""Recorded data: what each run read back, kept per population until PyNN asks for it.

PyNN's :class:`pyNN.recording.Recorder` builds the neo Blocks; this subclass only answers
its questions (spike times of some cells, the signal of a variable) from arrays the
session appends after each run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pyNN import recording

from toolchain.pynn import simulator
from toolchain.pynn.errors import NotSupportedError
from toolchain.pynn.standardmodels import SpikeSourcePoisson

__all__ = ["Recorder"]


class Recorder(recording.Recorder):  # type: ignore[misc]
    """Spikes as (index, time) arrays and signals as (samples, neurons) matrices."""

    _simulator = simulator

    def __init__(self, population: Any, file: Any = None) -> None:
        self._spike_index: list[npt.NDArray[np.int64]] = []
        self._spike_ms: list[npt.NDArray[np.float64]] = []
        self._signals: dict[str, list[npt.NDArray[np.float64]]] = {}
        super().__init__(population, file)

    def _record(self, variable: Any, new_ids: Any, sampling_interval: float | None = None) -> None:
        if variable.name == "spikes" and isinstance(self.population.celltype, SpikeSourcePoisson):
            raise NotSupportedError(
                "recording the spikes of a SpikeSourcePoisson",
                "recording spikes of IF_curr_exp, IF_cond_exp and SpikeSourceArray populations "
                "(record the neurons it drives instead)",
            )
        if sampling_interval is not None:
            dt = self._simulator.state.dt
            steps = sampling_interval / dt
            if abs(steps - round(steps)) > 1e-9 or round(steps) < 1:
                raise NotSupportedError(
                    f"sampling_interval {sampling_interval} ms",
                    f"whole multiples of the time step ({dt} ms)",
                )
            self.sampling_interval = sampling_interval
        self._simulator.state.parameters_changed()

    @property
    def interval_steps(self) -> int:
        """Steps between two samples of v and gsyn."""
        return max(1, round(self.sampling_interval / self._simulator.state.dt))

    def recorded_indices(self, name: str) -> npt.NDArray[np.int64]:
        """Population indices of the cells recording ``name``, sorted."""
        ids = [
            cell
            for variable, cells in self.recorded.items()
            if variable.name == name
            for cell in cells
        ]
        if not ids:
            return np.zeros(0, np.int64)
        return np.unique(np.asarray(self.population.id_to_index(np.array(ids)), np.int64))

    # --- appended by the session after each run
    def append_spikes(
        self, indices: npt.NDArray[np.int64], times_ms: npt.NDArray[np.float64]
    ) -> None:
        """Add spikes of this run (population indices, times in ms)."""
        self._spike_index.append(np.asarray(indices, np.int64))
        self._spike_ms.append(np.asarray(times_ms, np.float64))

    def append_signal(self, name: str, samples: npt.NDArray[np.float64], n_before: int) -> None:
        """Add a run's samples of ``name`` (samples x population size).

        Args:
            n_before: samples the signal should already hold (earlier runs); rows of NaN
                stand for runs during which this variable was not recorded.
        """
        parts = self._signals.setdefault(name, [])
        held = sum(p.shape[0] for p in parts)
        if held < n_before:
            parts.append(np.full((n_before - held, self.population.size), np.nan))
        parts.append(samples)

    # --- asked by PyNN's Recorder
    def _spikes(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        if not self._spike_index:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        if len(self._spike_index) > 1:
            self._spike_index = [np.concatenate(self._spike_index)]
            self._spike_ms = [np.concatenate(self._spike_ms)]
        return self._spike_index[0], self._spike_ms[0]

    def _get_spiketimes(self, ids: Any, clear: bool = False) -> Any:
        index, times = self._spikes()
        if hasattr(ids, "__len__"):
            wanted = np.asarray(self.population.id_to_index(np.asarray(ids, dtype=int)))
            keep = np.isin(index, wanted.reshape(-1))
            first = int(self.population.first_id)
            return (index[keep] + first).astype(int), times[keep].copy()
        return times[index == self.population.id_to_index(ids)].copy()

    def _get_all_signals(self, variable: Any, ids: Any, clear: bool = False) -> Any:
        parts = self._signals.get(variable.name, [])
        columns = np.asarray(self.population.id_to_index(np.asarray(ids, dtype=int))).reshape(-1)
        if not parts:
            return np.zeros((0, columns.size)), None
        data = np.concatenate(parts)[:, columns]
        return data, None

    def _local_count(self, variable: Any, filter_ids: Any = None) -> dict[int, int]:
        index, _ = self._spikes()
        counts = np.bincount(index, minlength=self.population.size)
        first = int(self.population.first_id)
        return {
            int(cell): int(counts[int(cell) - first])
            for cell in self.filter_recorded(variable, filter_ids)
        }

    def _clear_simulator(self) -> None:
        self._spike_index = []
        self._spike_ms = []
        self._signals = {}

    def _reset(self) -> None:
        pass
