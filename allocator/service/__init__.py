"""The service: one owner of the mutable state, and the command families that call it.

::

    state     ServiceState: jobs, queue, boards, power, operator state, timers, commits;
              changed only through its own methods
    v1        V1Commands: the spalloc v1 command handlers
    admin     OperatorCommands: the operator commands and the audit log
    views     StateViews: board and machine states for the map, metrics and events
    reload    Reconfigure: applying a reloaded configuration
    commands  CommandTable: command spec -> handler, one explicit table checked when built

`Service` puts them together; a new family (dispatch) plugs in with
``service.add_family(name, specs, handlers)`` and reaches the state through
``service.state``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from allocator.clock import Clock
from allocator.config import ServerConfig
from allocator.jobs import JobRecord
from allocator.machine import Machine
from allocator.service.admin import OperatorCommands
from allocator.service.commands import CommandTable, CommandTableError, Handler, Route
from allocator.service.reload import Reconfigure
from allocator.service.state import (
    AdminTargetError,
    JobListener,
    Listener,
    ServiceObserver,
    ServiceState,
)
from allocator.service.v1 import V1Commands
from allocator.service.views import BoardView, StateViews
from allocator.store import Store
from machine_models.geometry import BoardXYZ
from protocol import admin as a
from protocol.commands import (
    ALLOTMENT_VERSION_SPEC,
    V1_SPECS,
    V1_VERSION,
    CommandSpec,
    get_spec,
)

__all__ = [
    "V1_VERSION",
    "AdminTargetError",
    "BoardView",
    "CommandTable",
    "CommandTableError",
    "Handler",
    "JobListener",
    "Route",
    "Service",
    "ServiceObserver",
    "ServiceState",
    "known_commands",
]

WATCH_COMMANDS = frozenset({"notify_job", "no_notify_job", "notify_machine", "no_notify_machine"})
"""v1 commands the server answers itself: the watch sets belong to the connection."""


def known_commands() -> frozenset[str]:
    """The names of every command the service and the server answer (v1 and operator)."""
    return frozenset(
        {spec.name for spec in V1_SPECS}
        | {ALLOTMENT_VERSION_SPEC.name}
        | {spec.name for spec in a.ADMIN_SPECS}
    )


class Service:
    """Jobs, queue, allocations and power for every configured machine.

    Args:
        config: the validated configuration (machines in priority order and settings).
        store: the durable store, already opened.
        clock: where time comes from (a `FakeClock` in tests).
        observer: told about queue waits, keepalive expiries, power transitions and
            operator actions (the metrics).
        wall_clock: Unix time for audit entries (the clock may be a fake).
    """

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        clock: Clock,
        *,
        observer: ServiceObserver | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.state = ServiceState(config, store, clock, observer=observer, wall_clock=wall_clock)
        self.views = StateViews(self.state)
        self._reload = Reconfigure(self.state)
        self._config = config
        v1 = V1Commands(self.state)
        operator = OperatorCommands(
            self.state, self.views, lambda: self._config.server.operator_token
        )
        self.commands = CommandTable()
        v1_specs = [spec for spec in V1_SPECS if spec.name not in WATCH_COMMANDS]
        self.commands.add_family("v1", [*v1_specs, ALLOTMENT_VERSION_SPEC], v1.handlers())
        self.commands.add_family("operator", a.ADMIN_SPECS, operator.handlers())

    def __repr__(self) -> str:
        return f"<Service {self.state!r} {self.commands!r}>"

    # --- wiring -----------------------------------------------------------------------

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Restore the stored state, then run timers and board controllers until cancelled."""
        await self.state.run(on_started)

    def route(self, command: str) -> Route | None:
        """How a command is served, or None for an unknown command.

        Once the store has given up on the database every command is refused: the state
        in memory may be ahead of the database, and the service is stopping.
        """
        route = self.commands.route(command)
        if route is not None and self._store.is_broken:
            return Route(route.spec, self._refuse, route.family)
        return route

    async def _refuse(self, args: Any, conn: Any) -> None:
        raise await self._store.wait_broken()

    def add_family(
        self, family: str, specs: Iterable[CommandSpec], handlers: Mapping[str, Handler]
    ) -> None:
        """Serve an extension command family (see `CommandTable.add_family`)."""
        self.commands.add_family(family, specs, handlers)

    def add_handler(self, command: str, handler: Handler) -> None:
        """Serve one extension command registered with `protocol.commands.register`.

        A family of one, named after the command; prefer `add_family` for several.

        Raises:
            UnknownCommandError: no spec of that name is registered.
            CommandTableError: the command is already served.
        """
        self.commands.add_family(command, [get_spec(command)], {command: handler})

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(job_ids, machine_names)`` after each commit that changed them."""
        self.state.add_listener(listener)

    def reconfigure(self, config: ServerConfig) -> None:
        """Apply a reloaded configuration (see `Reconfigure.reconfigure`)."""
        self._config = config
        self._reload.reconfigure(config)

    # --- reading (the reporter, the map) ------------------------------------------------

    @property
    def machines(self) -> dict[str, Machine]:
        return self.state.machines

    @property
    def live_jobs(self) -> list[JobRecord]:
        return self.state.live_jobs()

    def job_record(self, job_id: int) -> JobRecord | None:
        return self.state.job_record(job_id)

    def job_counts(self) -> dict[str, int]:
        return self.state.job_counts()

    def is_draining(self, machine_name: str) -> bool:
        return self.state.is_draining(machine_name)

    def drain_reason(self, machine_name: str) -> str | None:
        return self.state.drain_reason(machine_name)

    def board_views(self, machine_name: str) -> dict[BoardXYZ, BoardView] | None:
        return self.views.board_views(machine_name)

    def board_status(self, machine_name: str, board: BoardXYZ) -> a.BoardStatus:
        return self.views.board_status(machine_name, board)

    def n_allocated_jobs(self, machine_name: str) -> int:
        return self.views.n_allocated_jobs(machine_name)

    def machine_state(self, machine_name: str) -> a.MachineState | None:
        return self.views.machine_state(machine_name)
