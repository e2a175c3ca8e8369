"""Applying a reloaded configuration (SIGHUP) to the running service."""

from __future__ import annotations

import heapq
import logging

from allocator import jobs as jobs_
from allocator.config import ServerConfig
from allocator.machine import Machine
from allocator.packing import MachineAllocator
from allocator.scheduler import Scheduler
from allocator.service.core import ServiceCore
from allocator.store import (
    ReleaseBoards,
)

__all__ = ["Reconfigure"]

log = logging.getLogger("allotment.service")


class Reconfigure(ServiceCore):
    """Configuration reload: machines matched by name, jobs touched only where needed."""

    # --- configuration reload ----------------------------------------------------------

    def reconfigure(self, config: ServerConfig) -> None:
        """Apply a reloaded configuration (SIGHUP), touching running jobs only where needed.

        Machines are matched by name. A machine whose size, layout or addresses changed is
        recreated and a removed machine dropped: their allocated jobs are destroyed with
        "Machine removed.". Tag and dead-board/link changes affect queued jobs only. Every
        queued job is re-queued against the new machines; one that can no longer fit
        anywhere is cancelled as it would have been at creation.
        """
        now = self._clock.now()
        changed: list[int] = []
        touched: set[str] = set()
        old = self._machines
        new = {mc.name: mc for mc in config.machines}
        for name, machine in old.items():
            replacement = new.get(name)
            if replacement == machine:
                continue
            touched.add(name)
            if replacement is None or not _same_hardware(machine, replacement):
                for job in [j for j in self._live.values() if j.record.machine_name == name]:
                    self._end(
                        job,
                        jobs_.cancel(job.record, now, jobs_.REASON_MACHINE_REMOVED),
                        changed,
                        set(),
                    )
                for job_id, machine_name in list(self._powering_off.items()):
                    if machine_name == name:
                        del self._powering_off[job_id]
                self._cooling = [c for c in self._cooling if c[1] != name]
                heapq.heapify(self._cooling)
                for (owner_machine, board), _ in list(self._board_owner.items()):
                    if owner_machine == name:
                        del self._board_owner[(owner_machine, board)]
                self._store.stage(ReleaseBoards(name, tuple(sorted(machine.live_boards))))
        touched |= set(new) - set(old)
        self._config = config
        self._machines = new
        allocators: dict[str, MachineAllocator] = {}
        for name, machine in new.items():
            allocator = MachineAllocator(machine)
            if name in old and _same_hardware(old[name], machine):
                previous = self._allocators[name]
                for job_id in self._holders(name):
                    held = previous.allocation(job_id)
                    if held is not None:
                        allocator.restore(job_id, held.boards, held.rectangle)
            allocators[name] = allocator
        self._allocators = allocators
        for name in new:
            self._apply_out_of_service(name)
        self._scheduler = Scheduler(self._allocators, config.server.starvation_s)
        for job in list(self._queue.values()):
            if job.request is not None:
                job.candidates = self._candidates(job.request)
                if not job.candidates:
                    self._end(
                        job,
                        jobs_.cancel(job.record, now, jobs_.REASON_NO_SUITABLE_MACHINES),
                        changed,
                        set(),
                    )
        touched |= self._schedule(changed)
        log.info("configuration reloaded: machines %s", ", ".join(new) or "none")
        self._background_commit(changed, touched)

    def _holders(self, machine_name: str) -> list[int]:
        """Every job holding boards of a machine: allocated, powering off or cooling down."""
        live = [
            j.record.job_id for j in self._live.values() if j.record.machine_name == machine_name
        ]
        off = [job_id for job_id, name in self._powering_off.items() if name == machine_name]
        cooling = [job_id for _, name, job_id in self._cooling if name == machine_name]
        return live + off + cooling


def _same_hardware(first: Machine, second: Machine) -> bool:
    """Whether two descriptions of a machine have the same size, layout and addresses."""
    return (
        first.width_triads == second.width_triads
        and first.height_triads == second.height_triads
        and first.board_locations == second.board_locations
        and first.bmp_ips == second.bmp_ips
        and first.spinnaker_ips == second.spinnaker_ips
    )
