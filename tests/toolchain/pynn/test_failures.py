"""A session that meets a failure: views of views, a load that fails, files that cannot be
written at the end. Each keeps the script's state true and frees the machine."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from toolchain.errors import RemoteError
from toolchain.pynn import simulator


def test_a_view_of_a_view_gets_and_sets_its_own_cells(sim: ModuleType) -> None:
    sim.setup(timestep=1.0)
    cells = sim.Population(10, sim.IF_curr_exp(), label="cells")
    inner = cells[2:8][1:3]  # cells 3 and 4
    assert inner.get("i_offset") == 0.0
    inner.set(i_offset=1.5)
    assert list(np.nonzero(cells.get("i_offset"))[0]) == [3, 4]
    assert inner.get("i_offset") == 1.5
    cells[::2][1:3].set(tau_m=11.0)  # cells 2 and 4
    assert list(np.nonzero(cells.get("tau_m") == 11.0)[0]) == [2, 4]


def _spike_counts(sim: ModuleType, *, fail_once: bool) -> list[int]:
    sim.setup(timestep=1.0)
    cells = sim.Population(3, sim.IF_curr_exp(), label="cells")
    cells.record("spikes")
    sim.run(10)
    cells.set(i_offset=2.0)
    if fail_once:
        machine = simulator.state.session.machine
        load = machine.load

        def failing(*args: Any, **kwargs: Any) -> None:
            machine.load = load
            raise RemoteError("server 127.0.0.1:1 did not answer in 1 s")

        machine.load = failing
        with pytest.raises(RemoteError):
            sim.run(50)
    sim.run(50)
    counts = [len(train) for train in cells.get_data().segments[0].spiketrains]
    sim.end()
    return counts


def test_a_change_whose_load_failed_is_loaded_by_the_next_run(sim: ModuleType) -> None:
    expected = _spike_counts(sim, fail_once=False)
    assert min(expected) > 0  # the new offset current makes the cells fire
    assert _spike_counts(sim, fail_once=True) == expected


def test_end_frees_the_machine_even_when_a_file_cannot_be_written(
    sim: ModuleType, workdir: Path
) -> None:
    sim.setup(timestep=1.0)
    cells = sim.Population(2, sim.IF_curr_exp(), label="cells")
    (workdir / "a-file").write_text("")
    cells.record("v", to_file=str(workdir / "a-file" / "v.pkl"))  # a folder that is a file
    sim.run(5)
    machine = simulator.state.session.machine
    closed: list[bool] = []
    close = machine.close
    machine.close = lambda: (closed.append(True), close())[1]
    with pytest.raises(NotADirectoryError):
        sim.end()
    assert closed == [True]
    assert simulator.state.session is None
