"""A script's run: map the PyNN network when it first runs, then run, continue, reset.

The session owns the mapped network and the machine it runs on. The first ``run()``
builds the toolchain description (:mod:`toolchain.pynn.netbuild`), maps it onto an
allocation sized for it and loads it; later runs continue from where the last stopped.
A parameter changed between runs (a Poisson rate, ``set(i_offset=...)``) loads new
parameters and carries the state over, keeping the ring buffers' weight shifts, as
sPyNNaker rewrites a core's parameters and keeps its synaptic matrix. ``reset()`` goes
back to t = 0 with the initial values. After each run the recorded data goes to the
populations' recorders and the provenance to the reports.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from machine_models.executor import Results
from machine_models.topology import Topology
from toolchain.build import MappedNetwork, map_network, spike_array_steps
from toolchain.errors import PlacementError
from toolchain.network import SpikeSourceArray
from toolchain.pynn.config import MachineSettings, describe
from toolchain.pynn.errors import NotSupportedError, RunError
from toolchain.pynn.machines import Machine, ServerMachine, VirtualMachine
from toolchain.pynn.netbuild import Built, build_network, learned_weights, quantised_weights
from toolchain.pynn.reports import ReportFolder, worries
from toolchain.pynn.standardmodels import STDPMechanism

__all__ = ["CHIPS_PER_BOARD", "Session", "boards_for"]

CHIPS_PER_BOARD = 48
APPLICATION_CORES_PER_CHIP = 17
MAX_VIRTUAL_BOARDS = 1200
PROGRESS_DELAY_S = 2.0
"""A run or a mapping shows a progress bar once it has taken this long."""


def boards_for(n_cores: int, n_boards: int | None = None, n_chips: int | None = None) -> int:
    """Boards for ``n_cores`` application cores, as sPyNNaker computes boards from chips."""
    chips = max(math.ceil(n_cores / APPLICATION_CORES_PER_CHIP), n_chips or 0, 1)
    return max(math.ceil(chips / CHIPS_PER_BOARD), n_boards or 0, 1)


def _cores_needed(built: Built) -> int:
    cores = 0
    for pop in built.network.populations:
        slices = math.ceil(pop.size / built.config.atoms_per_core(pop))
        cores += 2 * slices  # room for a delay extension per slice
    return cores


def _array_spikes(
    cell: SpikeSourceArray, size: int, t0: int, t1: int, dt: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The spikes a SpikeSourceArray sends in steps [t0, t1), at the step they go out."""
    index: list[npt.NDArray[np.int64]] = []
    times: list[npt.NDArray[np.float64]] = []
    for i, train in enumerate(cell.times_of(size)):
        steps = spike_array_steps(train, round(dt * 1000.0))
        steps = steps[(steps >= t0) & (steps < t1)]
        index.append(np.full(steps.size, i, np.int64))
        times.append(steps.astype(np.float64) * dt)
    if not index:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(index), np.concatenate(times)


def _handed_over(settings: MachineSettings) -> tuple[int, str] | None:
    """The job spynnaker.cfg hands this script (id, owner), if any."""
    if settings.spalloc_job is None:
        return None
    return settings.spalloc_job, settings.spalloc_job_owner or settings.spalloc_user


class Session:
    """The mapped network of a script and the machine running it.

    Args:
        state: the backend's simulator state (populations, projections, time step).
        settings: where to run.
        reports: the run's report folder.
        out: where the end-of-run summary is printed.
    """

    def __init__(
        self,
        state: Any,
        settings: MachineSettings,
        reports: ReportFolder,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self._state = state
        self.settings = settings
        self.reports = reports
        self._out = out or (lambda line: print(line, file=sys.stdout))
        self.machine: Machine = (
            VirtualMachine()
            if settings.is_virtual or settings.spalloc_server is None
            else ServerMachine(
                settings.spalloc_server,
                settings.spalloc_port,
                settings.spalloc_user,
                standby=_handed_over(settings),
            )
        )
        self._built: Built | None = None
        self.mapped: MappedNetwork | None = None
        self._is_loaded = False
        self._last: Results | None = None
        self._is_structure_dirty = True
        self._is_parameters_dirty = False
        self.is_ended = False

    # --- notifications from the PyNN objects
    def structure_changed(self) -> None:
        """Populations, projections or cells were added."""
        self._is_structure_dirty = True

    def parameters_changed(self) -> None:
        """Parameters, initial values or recording changed."""
        self._is_parameters_dirty = True

    def initial_values_changed(self) -> None:
        """initialize() was called: allowed before the first run or after a reset."""
        if self.machine.step > 0:
            raise NotSupportedError(
                "initialize() between runs without reset()",
                "initialize() before the first run, or after reset()",
            )
        self._is_parameters_dirty = True

    def reset(self) -> None:
        """Back to t = 0: the next run loads the network afresh (plastic weights included,
        as sPyNNaker resets them: `get("weight")` answers the initial ones again)."""
        self.machine.restart()
        if self._built is not None and self.mapped is not None:
            for proj, parts in self._built.parts:
                if isinstance(proj.synapse_type, STDPMechanism):
                    proj.set_quantised_weights(
                        partial(quantised_weights, proj, parts, self.mapped.shifts)
                    )

    # --- mapping
    def _map(
        self,
        weight_shifts: dict[tuple[int, int], int] | None = None,
        topology: Topology | None = None,
    ) -> MappedNetwork:
        """Build and map the network: on ``topology``, or on a new allocation sized for it."""
        state = self._state
        with tqdm(
            total=3, desc="Mapping", unit="stage", delay=PROGRESS_DELAY_S, file=sys.stderr
        ) as bar:
            built = build_network(
                state.populations,
                state.projections,
                state.dt,
                state.neurons_per_core,
                weight_shifts,
            )
            bar.update()
            if topology is not None:
                mapped = map_network(built.network, topology, built.config)
            else:
                mapped = self._map_on_new_allocation(built)
            bar.update()
            for proj, parts in built.parts:
                proj.set_quantised_weights(partial(quantised_weights, proj, parts, mapped.shifts))
            self.reports.write_mapping(mapped, describe(self.settings))
            bar.update()
        self._built = built
        self.mapped = mapped
        self._is_structure_dirty = False
        self._is_parameters_dirty = False
        return mapped

    def _map_on_new_allocation(self, built: Built) -> MappedNetwork:
        n_boards = boards_for(
            _cores_needed(built),
            self.settings.n_boards_required,
            self.settings.n_chips_required,
        )
        while True:
            try:
                return map_network(built.network, self.machine.allocate(n_boards), built.config)
            except PlacementError:
                if n_boards >= MAX_VIRTUAL_BOARDS:
                    raise
                n_boards = min(MAX_VIRTUAL_BOARDS, 2 * n_boards)

    def topology(self) -> Topology:
        """The allocation the network is mapped on (mapping it if not yet)."""
        if self.mapped is None or self._is_structure_dirty:
            self._map()
        assert self.mapped is not None
        return self.mapped.topology

    def _ready(self) -> None:
        machine = self.machine
        is_running = machine.step > 0
        if self._is_structure_dirty:
            if is_running:
                raise RunError(
                    "populations or projections were added after run(); call reset() "
                    "before running again"
                )
            mapped = self._map()
            self._load(mapped, is_carrying_state=False)
        elif self._is_parameters_dirty:
            assert self.mapped is not None
            shifts = dict(self.mapped.shifts) if is_running else None
            mapped = self._map(weight_shifts=shifts, topology=self.mapped.topology)
            self._load(mapped, is_carrying_state=is_running)
        elif not self._is_loaded:  # mapped by get_machine(), not loaded yet
            assert self.mapped is not None
            self._load(self.mapped, is_carrying_state=False)

    def _load(self, mapped: MappedNetwork, *, is_carrying_state: bool) -> None:
        """Load a new mapping; if that fails, the change stays to be loaded by the next run."""
        try:
            self.machine.load(mapped.image, mapped.topology, is_carrying_state=is_carrying_state)
        except BaseException:
            self._is_parameters_dirty = True  # mapped again from the same values next time
            self._is_loaded = False
            raise
        self._is_loaded = True

    # --- running
    def run(self, n_steps: int) -> None:
        """Advance the network by ``n_steps`` time steps and file what was recorded."""
        self._ready()
        chunk = self.machine.chunk_steps(n_steps)
        with tqdm(
            total=n_steps, desc="Running", unit="step", delay=PROGRESS_DELAY_S, file=sys.stderr
        ) as bar:
            done = 0
            while done < n_steps:
                steps = min(chunk, n_steps - done)
                t0 = self.machine.step
                start = done

                def moved(steps_done: int, start: int = start) -> None:
                    bar.update(start + steps_done - bar.n)

                results = self.machine.run(steps, progress=moved)
                self._file(results, t0, self.machine.step)
                self._last = results
                done += steps
                bar.update(done - bar.n)
        assert self.mapped is not None
        if self._built is not None:
            for proj, parts in self._built.parts:
                if isinstance(proj.synapse_type, STDPMechanism):
                    # get("weight") answers what the run learned
                    proj.set_quantised_weights(
                        partial(learned_weights, proj, parts, self.mapped, results)
                    )
        self.reports.write_provenance(self.mapped, results)

    def _file(self, results: Results, t0: int, t1: int) -> None:
        assert self._built is not None
        assert self.mapped is not None
        dt = self._state.dt
        spikes = {tuple(k): v for k, v in results.spikes.items()}
        signals = {
            "v": {tuple(k): v for k, v in results.v_mv.items()},
            "gsyn_exc": {tuple(k): v for k, v in results.gsyn_exc_na.items()},
            "gsyn_inh": {tuple(k): v for k, v in results.gsyn_inh_na.items()},
        }
        for pop, tpop in self._built.populations:
            if not tpop.recorded:
                continue
            recorder = pop.recorder
            cores = self.mapped.cores_of(tpop)
            if "spikes" in tpop.recorded and isinstance(tpop.cell, SpikeSourceArray):
                # a spike array sends exactly its spike times: read them from the description
                index_parts_a, times_a = _array_spikes(tpop.cell, tpop.size, t0, t1, dt)
                keep_a = np.isin(index_parts_a, tpop.recorded["spikes"])
                recorder.append_spikes(index_parts_a[keep_a], times_a[keep_a])
            elif "spikes" in tpop.recorded:
                index_parts: list[npt.NDArray[np.int64]] = []
                step_parts: list[npt.NDArray[np.int64]] = []
                for vertex, where in cores:
                    rows = spikes.get(tuple(where))
                    if rows is not None and rows.size:
                        index_parts.append(rows[:, 1] + vertex.lo)
                        step_parts.append(rows[:, 0])
                if index_parts:
                    index = np.concatenate(index_parts)
                    steps = np.concatenate(step_parts)
                    keep = np.isin(index, tpop.recorded["spikes"])
                    recorder.append_spikes(index[keep], steps[keep] * dt)
            interval = max(1, round((tpop.sampling_interval_ms or dt) / dt))
            n_before = -(-t0 // interval)
            n_samples = -(-t1 // interval) - n_before
            for name, by_core in signals.items():
                ids = tpop.recorded.get(name)
                if ids is None:
                    continue
                matrix = np.full((n_samples, tpop.size), np.nan)
                for vertex, where in cores:
                    block = by_core.get(tuple(where))
                    if block is not None:
                        matrix[:, vertex.lo : vertex.hi] = block[:n_samples]
                mask = np.ones(tpop.size, dtype=bool)
                mask[ids] = False
                matrix[:, mask] = np.nan
                recorder.append_signal(name, matrix, n_before)

    def end(self) -> list[str]:
        """Write the last reports, print what to worry about and free the machine."""
        if self.is_ended:
            return []
        self.is_ended = True
        lines: list[str] = []
        try:
            if self.mapped is not None and self._last is not None:
                lines = worries(self.mapped, self._last)
                self.reports.write_worries(lines)
                if lines:
                    self._out(
                        f"allotment: {len(lines)} things to look at"
                        f" (reports in {self.reports.path}):"
                    )
                    for line in lines:
                        self._out(f"  {line}")
        finally:
            self.machine.close()  # the boards are freed even if the reports cannot be written
        return lines
