"""The queue rule: which queued jobs get boards now, on which machine; pure, no clock.

Rule (docs/architecture.md, "Queue rule"):

1. Jobs are considered oldest first (by ``queued_at``, then job id), each on its candidate
   machines in priority order; the first machine where it fits now gets it.
2. A job that does not fit now does not stop younger jobs that fit (no head-of-line
   blocking).
3. A job that has waited at least ``starvation_s`` gets a reservation on its first
   candidate machine where it could ever fit: the region of its shape with the fewest
   boards in use. No younger job is given a board in a reserved region. Reservations are
   made oldest first and kept until the job is placed or leaves the queue, so every job
   is eventually allocated as long as jobs end.

Within one pass free space only shrinks, so "this request does not fit on this machine"
is remembered for the rest of the pass and equal requests are not tried again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from allocator.packing import Allocation, MachineAllocator, rectangle_for_area
from allocator.requests import JobRequest, RequestKind
from machine_models.geometry import TriadXY

__all__ = ["Placement", "QueuedJob", "Scheduler"]


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A job waiting for boards.

    Attributes:
        job_id: The job.
        request: What it asks for.
        machines: Names of the machines it may run on, in priority order.
        queued_at: When it was queued (Unix seconds).
    """

    job_id: int
    request: JobRequest
    machines: tuple[str, ...]
    queued_at: float


@dataclass(frozen=True, slots=True)
class Placement:
    """A decision: the job now holds this allocation (already applied to the allocator)."""

    job_id: int
    machine_name: str
    allocation: Allocation


class Scheduler:
    """Applies the queue rule over a set of machine allocators."""

    def __init__(self, allocators: Mapping[str, MachineAllocator], starvation_s: float) -> None:
        """Args:
        allocators: One allocator per machine name; the scheduler allocates in them.
        starvation_s: Queue wait after which a job gets a reservation.
        """
        self._allocators = allocators
        self.starvation_s = starvation_s
        self._reservations: dict[int, tuple[str, frozenset[TriadXY]]] = {}

    @property
    def reservations(self) -> Mapping[int, tuple[str, frozenset[TriadXY]]]:
        """Current reservations: job id -> (machine name, reserved triads)."""
        return dict(self._reservations)

    def schedule(self, queued: Sequence[QueuedJob], now: float) -> list[Placement]:
        """Allocate every queued job that may have boards now; return the decisions.

        The allocations are made in the allocators; the caller persists the placements
        (or frees them if it cannot).

        Args:
            queued: The queued jobs, in any order.
            now: The current time, comparable with ``queued_at``.
        """
        if not queued:
            # Nothing can be placed (boards freed with no job waiting, say): no pass.
            self._reservations.clear()
            return []
        order = sorted(queued, key=lambda j: (j.queued_at, j.job_id))
        if self._reservations:
            live_ids = {j.job_id for j in order}
            for job_id in list(self._reservations):
                if job_id not in live_ids:
                    del self._reservations[job_id]
        reserved: dict[str, set[TriadXY]] = {}
        placements: list[Placement] = []
        does_not_fit: set[tuple[str, JobRequest]] = set()
        for job in order:
            own = self._reservations.get(job.job_id)
            placed = False
            for name in job.machines:
                allocator = self._allocators.get(name)
                if allocator is None:
                    continue
                key = (name, job.request)
                # (hashing a request is not free: most passes have nothing here to look up)
                if own is None and does_not_fit and key in does_not_fit:
                    continue
                allocation = allocator.allocate(
                    job.request, job.job_id, frozenset(reserved.get(name, ()))
                )
                if allocation is not None:
                    placements.append(Placement(job.job_id, name, allocation))
                    self._reservations.pop(job.job_id, None)
                    placed = True
                    break
                if own is None:
                    does_not_fit.add(key)
            if placed:
                continue
            if own is None and now - job.queued_at >= self.starvation_s:
                own = self._reserve(job, reserved)
                if own is not None:
                    self._reservations[job.job_id] = own
            if own is not None:
                reserved.setdefault(own[0], set()).update(own[1])
        return placements

    def _reserve(
        self, job: QueuedJob, reserved: Mapping[str, set[TriadXY]]
    ) -> tuple[str, frozenset[TriadXY]] | None:
        """The region of the job's shape with the fewest boards in use, on its first machine."""
        for name in job.machines:
            allocator = self._allocators.get(name)
            if allocator is None or not allocator.fits_ever(job.request):
                continue
            machine = allocator.machine
            request = job.request
            if request.kind is RequestKind.SPECIFIC and request.board is not None:
                return name, frozenset({TriadXY(request.board.x, request.board.y)})
            if request.kind is RequestKind.TRIADS:
                shape: tuple[int, int] | None = (request.width_triads, request.height_triads)
            elif request.kind is RequestKind.BOARDS:
                shape = rectangle_for_area(
                    request.n_triads, machine.width_triads, machine.height_triads, request.min_ratio
                )
            else:
                shape = (1, 1)
            if shape is None:
                continue
            w, h = shape
            used = allocator.busy_triads().astype(np.int32)
            for t in reserved.get(name, set()):
                used[t.x, t.y] = w * h + 1  # never share another job's reservation
            table = np.zeros((used.shape[0] + 1, used.shape[1] + 1), dtype=np.int64)
            table[1:, 1:] = used.cumsum(0).cumsum(1)
            sums = table[w:, h:] - table[:-w, h:] - table[w:, :-h] + table[:-w, :-h]
            if sums.size == 0:
                continue
            x, y = np.unravel_index(int(np.argmin(sums)), sums.shape)
            if sums[x, y] > w * h:
                continue
            return name, frozenset(
                TriadXY(int(x) + dx, int(y) + dy) for dx in range(w) for dy in range(h)
            )
        return None
