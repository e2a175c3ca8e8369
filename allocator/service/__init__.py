"""The service: sole owner of the mutable state (jobs, queue, board occupancy, power).

`Service` is the facade the server and the app use; its parts live in modules of their own::

    core      state, restore, commits, scheduling, power, timers (the job lifecycle)
    v1        the spalloc v1 command handlers
    admin     the operator commands and the audit log
    views     board and machine states for the map, metrics and events
    reload    applying a reloaded configuration
"""

from __future__ import annotations

from allocator.jobs import JobRecord
from allocator.machine import Machine
from allocator.service.admin import AdminTargetError, OperatorCommands
from allocator.service.core import Handler, Listener, PowerListener, ServiceObserver
from allocator.service.reload import Reconfigure
from allocator.service.v1 import V1Commands
from protocol.commands import V1_VERSION

__all__ = ["V1_VERSION", "AdminTargetError", "Service", "ServiceObserver"]


class Service(Reconfigure, OperatorCommands, V1Commands):
    """Jobs, queue, allocations and power for every configured machine.

    Constructed as `ServiceCore` is: ``Service(config, store, clock, observer=...,
    wall_clock=...)``.
    """

    def _command_handlers(self) -> dict[str, Handler]:
        return {
            "version": self._version_cmd,
            "allotment_version": self._allotment_version,
            "create_job": self.create_job,
            "job_keepalive": self.job_keepalive,
            "get_job_state": self.get_job_state,
            "get_job_machine_info": self.get_job_machine_info,
            "power_on_job_boards": self.power_on_job_boards,
            "power_off_job_boards": self.power_off_job_boards,
            "destroy_job": self.destroy_job,
            "list_jobs": self.list_jobs,
            "list_machines": self.list_machines,
            "get_board_position": self.get_board_position,
            "get_board_at_position": self.get_board_at_position,
            "where_is": self.where_is,
            "admin_set_board_service": self._admin_set_board_service,
            "admin_set_link_service": self._admin_set_link_service,
            "admin_drain_machine": self._admin_drain,
            "admin_undrain_machine": self._admin_drain,
            "admin_destroy_job": self._admin_destroy_job,
            "admin_audit_log": self._admin_audit_log,
            "admin_machine_state": self._admin_machine_state,
        }

    def __repr__(self) -> str:
        return (
            f"<Service machines={list(self._machines)} live={len(self._live)}"
            f" queued={len(self._queue)}"
            f" retired={len(self._retired)} next_job_id={self._next_job_id}>"
        )

    # --- wiring -----------------------------------------------------------------------

    def handler_for(self, command: str) -> Handler | None:
        """The coroutine that answers a command, or None for an unknown command."""
        return self._handlers.get(command)

    def add_handler(self, command: str, handler: Handler) -> None:
        """Serve an extension command with ``handler(arguments, connection)``."""
        self._handlers[command] = handler

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(job_ids, machine_names)`` after each commit that changed them."""
        self._listeners.append(listener)

    def add_power_listener(self, listener: PowerListener) -> None:
        """Call ``listener(job_id, is_on)`` whenever a job's boards are switched or reset."""
        self._power_listeners.append(listener)

    def job_record(self, job_id: int) -> JobRecord | None:
        """A job's record, live or retired; None for an unknown (or forgotten) id."""
        job = self._live.get(job_id)
        return job.record if job is not None else self._retired.get(job_id)

    @property
    def machines(self) -> dict[str, Machine]:
        return dict(self._machines)

    @property
    def live_jobs(self) -> list[JobRecord]:
        return [job.record for job in self._live.values()]
