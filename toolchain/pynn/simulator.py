"""The backend's one simulator state, as every PyNN backend has (``simulator.state``).

PyNN's common code reads ``state.t``, ``state.dt``, ``state.min_delay`` ... and registers
recorders here; the backend's populations and projections register themselves too, so
that the first ``run()`` can map the whole network. The run itself is the
:class:`~toolchain.pynn.session.Session`'s.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from pyNN import common

if TYPE_CHECKING:
    from toolchain.pynn.session import Session

__all__ = ["ID", "State", "name", "state"]

logger = logging.getLogger("allotment.pynn")

_STEP_TOLERANCE = 1e-9
"""A run time within this many steps of a whole number of them is that number."""

name = "allotment"
"""Annotates PyNN's output data (``Block.annotations["simulator"]``)."""


class ID(int, common.IDMixin):  # type: ignore[misc]
    """A cell's id: an int that knows its population (PyNN's IDMixin)."""

    def __init__(self, n: int) -> None:
        int.__init__(n)
        common.IDMixin.__init__(self)


class State(common.control.BaseState):  # type: ignore[misc]
    """Time, step, registered objects and the run session of the current network."""

    def __init__(self) -> None:
        super().__init__()
        self.mpi_rank = 0
        self.num_processes = 1
        self.dt = 0.1
        self.min_delay: float | str = "auto"
        self.max_delay: float | str = "auto"
        self.session: Session | None = None
        self.clear()

    def clear(self) -> None:
        """Forget the network: a new setup() starts from nothing."""
        self.recorders: set[Any] = set()
        self.populations: list[Any] = []
        self.projections: list[Any] = []
        self.id_counter = 0
        self.segment_counter = -1
        self.neurons_per_core: dict[str, int] = {}
        self.write_on_end: list[Any] = []
        self.reset()

    def reset(self) -> None:
        """Back to t = 0 with the initial values; a new segment of recorded data."""
        self.running = False
        self.t = 0.0
        self.t_start = 0.0
        self.segment_counter += 1
        for recorder in self.recorders:
            recorder._clear_simulator()
        if self.session is not None:
            self.session.reset()

    def run_until(self, tstop: float) -> None:
        """Advance to ``tstop`` ms (whole time steps)."""
        if self.session is None:
            raise RuntimeError("setup() must be called before run()")
        steps = (tstop - self.t) / self.dt
        n_steps = math.ceil(steps - _STEP_TOLERANCE)
        if n_steps > 0 and abs(steps - round(steps)) > _STEP_TOLERANCE:
            # as sPyNNaker does: a part of a time step is a whole one, and it says so
            logger.warning(
                "the run time of %g ms is not a whole number of time steps of %g ms;"
                " rounded up to %d step%s (%g ms)",
                tstop - self.t,
                self.dt,
                n_steps,
                "" if n_steps == 1 else "s",
                n_steps * self.dt,
            )
        if n_steps > 0:
            self.session.run(n_steps)
        self.t = self.t + n_steps * self.dt
        self.running = True

    def network_changed(self) -> None:
        """A population, projection or recording was added: the next run maps again."""
        if self.session is not None:
            self.session.structure_changed()

    def initial_values_changed(self) -> None:
        """An initial value changed: it applies from t = 0 (the next run after a reset)."""
        if self.session is not None:
            self.session.initial_values_changed()

    def parameters_changed(self) -> None:
        """A parameter or initial value changed: the next run loads new parameters."""
        if self.session is not None:
            self.session.parameters_changed()


state = State()
