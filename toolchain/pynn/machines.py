"""Where a mapped network runs: the chip model in this process, or boards on a server.

A session sees one small interface (:class:`Machine`): get an allocation of ``n`` boards,
load an image (fresh, or carrying the running state over to new parameters), run ``n``
steps and hand back what those steps recorded, start again from t = 0, close.
"""

from __future__ import annotations

from typing import Protocol

from machine_models.executor import Executor, Results
from machine_models.image import Image
from machine_models.topology import Topology
from toolchain.allocation import virtual_allocation

__all__ = ["Machine", "VirtualMachine"]


class Machine(Protocol):
    """What the session needs of the machine it runs on."""

    @property
    def step(self) -> int:
        """Steps run since the last fresh load."""

    def allocate(self, n_boards: int) -> Topology:
        """An allocation of at least ``n_boards`` boards (asked once per mapping)."""

    def load(self, image: Image, topology: Topology, *, is_carrying_state: bool) -> None:
        """Load ``image``; with ``is_carrying_state`` the running state goes on in it."""

    def run(self, n_steps: int) -> Results:
        """Run ``n_steps`` and return what they recorded (and the counters so far)."""

    def restart(self) -> None:
        """The next run starts from t = 0 and the loaded image's initial state."""

    def close(self) -> None:
        """Free the machine."""


class VirtualMachine:
    """The chip model (:class:`~machine_models.executor.Executor`) in this process."""

    def __init__(self) -> None:
        self._executor: Executor | None = None
        self._loaded: tuple[Image, Topology] | None = None

    @property
    def step(self) -> int:
        """Steps run since the last fresh load."""
        return 0 if self._executor is None else self._executor.step

    def allocate(self, n_boards: int) -> Topology:
        """A virtual allocation shaped as spalloc shapes ``n_boards`` boards."""
        return virtual_allocation(n_boards)

    def load(self, image: Image, topology: Topology, *, is_carrying_state: bool) -> None:
        """Load the image; carrying the state hands the chips' state to the new executor."""
        fresh = Executor(image, topology)
        if is_carrying_state and self._executor is not None:
            fresh.adopt_state(self._executor)
        self._executor = fresh
        self._loaded = (image, topology)

    def run(self, n_steps: int) -> Results:
        """Advance the executor."""
        if self._executor is None:
            if self._loaded is None:
                raise RuntimeError("no image loaded")
            self._executor = Executor(*self._loaded)
        return self._executor.run(n_steps)

    def restart(self) -> None:
        """Drop the running state; the next run loads the image afresh."""
        self._executor = None

    def close(self) -> None:
        """Drop everything."""
        self._executor = None
        self._loaded = None
