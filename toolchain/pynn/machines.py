"""Where a mapped network runs: the chip model in this process, or boards on a server.

A session sees one small interface (:class:`Machine`): get an allocation of ``n`` boards,
load an image (fresh, or carrying the running state over to new parameters), run ``n``
steps and hand back what those steps recorded, start again from t = 0, close.

On a server (:class:`ServerMachine`) the boards are a spalloc job held by
:class:`toolchain.remote.RemoteMachine`, whose own thread keeps the job alive while the
script runs; images go up and results come back through the dispatch commands::

    script            ServerMachine                 allotment server
    sim.run(100) ---> RemoteMachine.run(1000) ----> start_run, run_status ... done
                 <--- this run's part of <-------- fetch_results (all since the fresh run)
                      results()
    pop.set(...)
    sim.run(100) ---> RemoteMachine.load(keep_state) -> load_image: the state goes over
                      RemoteMachine.run(1000) ----> start_run (on from the state kept)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from machine_models.executor import Executor, Results
from machine_models.image import CoreXYP, Image
from machine_models.topology import Topology
from toolchain.allocation import virtual_allocation
from toolchain.errors import RemoteError
from toolchain.remote import RemoteMachine

__all__ = ["ALLOCATE_TIMEOUT_S", "Machine", "ServerMachine", "VirtualMachine"]

ALLOCATE_TIMEOUT_S = 600.0
"""Longest wait for the server to power the boards of a job on."""
_T = TypeVar("_T", bound=np.generic)


class Machine(Protocol):
    """What the session needs of the machine it runs on."""

    @property
    def step(self) -> int:
        """Steps run since the last fresh load."""

    def allocate(self, n_boards: int) -> Topology:
        """An allocation of at least ``n_boards`` boards (asked once per mapping)."""

    def load(self, image: Image, topology: Topology, *, is_carrying_state: bool) -> None:
        """Load ``image``; with ``is_carrying_state`` the running state goes on in it."""

    def chunk_steps(self, n_steps: int) -> int:
        """Steps per call of :meth:`run` when a run of ``n_steps`` shows progress."""

    def run(self, n_steps: int, progress: Callable[[int], None] | None = None) -> Results:
        """Run ``n_steps`` and return what they recorded (and the counters so far).

        ``progress(steps_done)`` may be called while it runs.
        """

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

    def chunk_steps(self, n_steps: int) -> int:
        """Runs in pieces of 1/50 (at least 500 steps), so a bar can move between them."""
        return max(500, -(-n_steps // 50))

    def run(self, n_steps: int, progress: Callable[[int], None] | None = None) -> Results:
        """Advance the executor (the caller shows progress between pieces)."""
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


def _new_rows(
    held: Mapping[CoreXYP, npt.NDArray[_T]], seen: dict[CoreXYP, int]
) -> dict[CoreXYP, npt.NDArray[_T]]:
    """The rows of each core's array past those handed on before (and remember them)."""
    part: dict[CoreXYP, npt.NDArray[_T]] = {}
    for core, rows in held.items():
        start = seen.get(core, 0)
        part[core] = rows[start:]
        seen[core] = rows.shape[0]
    return part


class ServerMachine:
    """Boards of an allotment server, driven through the dispatch commands.

    The job is created when the network is first mapped (sized as the session asks), kept
    alive by :class:`~toolchain.remote.RemoteMachine`'s own thread while the script runs,
    and destroyed at ``end()`` (or at exit). A lost server or a destroyed job raises
    :class:`~toolchain.errors.RemoteError` naming the server, never hangs.

    A job handed over (``standby``: its id and owner, already allocated and powered by a
    batch runner) is taken for the first mapping if it has the boards asked for; one that
    is too small is destroyed, one that is gone is passed over, and the boards are then
    allocated as usual (a line on stderr says so).

    Args:
        host: the server's address.
        port: its spalloc port.
        owner: the job's owner (``spalloc_user``).
        keepalive_s: the job's keepalive.
        standby: a job handed over for this script: ``(job_id, owner)``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        owner: str,
        keepalive_s: float = 60.0,
        standby: tuple[int, str] | None = None,
    ) -> None:
        self._host, self._port, self._owner = host, port, owner
        self._keepalive_s = keepalive_s
        self._standby = standby
        self._remote: RemoteMachine | None = None
        self._step = 0
        self._is_fresh = True
        self._seen: list[dict[CoreXYP, int]] = [{}, {}, {}, {}]

    @property
    def step(self) -> int:
        """Steps run since the last fresh run."""
        return self._step

    @property
    def job_id(self) -> int | None:
        """The server's job, once boards are allocated."""
        return None if self._remote is None else self._remote.job_id

    def allocate(self, n_boards: int) -> Topology:
        """Create a job of ``n_boards`` boards (or take the one handed over) once powered."""
        self.close()
        adopted = self._adopt(n_boards)
        if adopted is not None:
            self._remote = adopted
            return adopted.topology
        self._remote = RemoteMachine.allocate(
            self._host,
            self._port,
            owner=self._owner,
            n_boards=n_boards,
            keepalive_s=self._keepalive_s,
            timeout_s=ALLOCATE_TIMEOUT_S,
        )
        return self._remote.topology

    def _adopt(self, n_boards: int) -> RemoteMachine | None:
        """The job handed over, if there is one, it is still there, and it is big enough."""
        if self._standby is None:
            return None
        (job_id, owner), self._standby = self._standby, None
        try:
            remote = RemoteMachine.adopt(
                self._host,
                self._port,
                job_id=job_id,
                owner=owner,
                keepalive_s=self._keepalive_s,
                timeout_s=ALLOCATE_TIMEOUT_S,
            )
        except RemoteError as error:
            print(f"allotment: not using job {job_id} handed over: {error}", file=sys.stderr)
            return None
        n_held = len(remote.topology.ethernet_chips)
        if n_held < n_boards:
            remote.close()
            print(
                f"allotment: job {job_id} handed over has {n_held} of the {n_boards} boards"
                " the network needs: destroyed it",
                file=sys.stderr,
            )
            return None
        return remote

    def load(self, image: Image, topology: Topology, *, is_carrying_state: bool) -> None:
        """Upload the image: the next run starts afresh from it, or, carrying the state,
        goes on from where the last one left the chips (the server's ``keep_state``)."""
        is_kept = is_carrying_state and not self._is_fresh
        try:
            self._require().load(image, keep_state=is_kept)
        except RemoteError as error:
            if not is_kept:
                raise
            raise RemoteError(
                f"{error} (sim.reset() starts the network again from time 0 with the new"
                " parameters)"
            ) from None
        if not is_kept:
            self.restart()

    def chunk_steps(self, n_steps: int) -> int:
        """One run on the server: it reports its own progress."""
        return n_steps

    def run(self, n_steps: int, progress: Callable[[int], None] | None = None) -> Results:
        """Run on the server and return this run's part of the results."""
        remote = self._require()
        report = None if progress is None else (lambda done, _total: progress(done))
        remote.run(n_steps, fresh=self._is_fresh, progress=report)
        self._is_fresh = False
        self._step += n_steps
        held = remote.results()
        spikes, v, gsyn_exc, gsyn_inh = self._seen
        return Results(
            _new_rows(held.spikes, spikes),
            _new_rows(held.v_mv, v),
            _new_rows(held.gsyn_exc_na, gsyn_exc),
            _new_rows(held.gsyn_inh_na, gsyn_inh),
            held.core_provenance,
            held.router_provenance,
            held.synaptic_matrices,
        )

    def restart(self) -> None:
        """The next run starts from the loaded image's initial state."""
        self._is_fresh = True
        self._step = 0
        self._seen = [{}, {}, {}, {}]

    def close(self) -> None:
        """Destroy the job, freeing its boards."""
        if self._remote is not None:
            remote, self._remote = self._remote, None
            remote.close()

    def _require(self) -> RemoteMachine:
        if self._remote is None:
            raise RuntimeError("no boards allocated")
        return self._remote
