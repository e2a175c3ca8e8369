"""Applying a reloaded configuration (SIGHUP) to the running service."""

from __future__ import annotations

import logging

from allocator.config import ServerConfig
from allocator.machine import Machine
from allocator.service.state import ServiceState

__all__ = ["Reconfigure"]

log = logging.getLogger("allotment.service")


class Reconfigure:
    """Configuration reload: machines matched by name, jobs touched only where needed."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def reconfigure(self, config: ServerConfig) -> None:
        """Apply a reloaded configuration (SIGHUP), touching running jobs only where needed.

        Machines are matched by name. A machine whose size, layout or addresses changed is
        recreated and a removed machine dropped: their allocated jobs are destroyed with
        "Machine removed.". Tag and dead-board/link changes affect queued jobs only. Every
        queued job is re-queued against the new machines; one that can no longer fit
        anywhere is cancelled as it would have been at creation.

        Raises:
            AllocationConflictError: a kept machine's new description marks dead a board a
                job holds; nothing changed (the whole reload is refused).
        """
        state = self._state
        changed: list[int] = []
        touched: set[str] = set()
        old = state.machines
        new = {mc.name: mc for mc in config.machines}
        kept = {
            name
            for name, machine in old.items()
            if name in new and _same_hardware(machine, new[name])
        }
        allocators = state.allocators_for(config, kept)  # raises before anything changes
        for name, machine in old.items():
            if name in kept:
                if new[name] != machine:
                    touched.add(name)
                continue
            touched.add(name)
            state.remove_machine(name, changed)
        touched |= set(new) - set(old)
        state.install_config(config, allocators)
        touched |= state.requeue(changed)
        log.info("configuration reloaded: machines %s", ", ".join(new) or "none")
        state.commit_in_background(changed, touched)


def _same_hardware(first: Machine, second: Machine) -> bool:
    """Whether two descriptions of a machine have the same size, layout and addresses."""
    return (
        first.width_triads == second.width_triads
        and first.height_triads == second.height_triads
        and first.board_locations == second.board_locations
        and first.bmp_ips == second.bmp_ips
        and first.spinnaker_ips == second.spinnaker_ips
    )
