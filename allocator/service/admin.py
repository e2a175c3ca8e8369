"""The operator commands (`protocol.admin`) and their audit log.

Boards and links taken out of service, machines drained, jobs destroyed with a reason; each
one is recorded in the audit log in the same transaction as its effect. A drained machine
allocates nothing: queued jobs that could only run there wait, running jobs keep their boards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from allocator.service.state import AdminTargetError, ServiceState
from allocator.service.views import StateViews
from machine_models.geometry import Link
from protocol import admin as a

__all__ = ["AdminTargetError", "OperatorCommands"]


def _peer(conn: Any) -> str:
    return str(getattr(conn, "peer_host", "") or "")


def _changed_by(args: a.AdminSetBoardServiceArgs | a.AdminDrainMachineArgs, conn: Any) -> str:
    """Who an operator change is recorded as: the operator named, else the peer's host."""
    return args.operator or _peer(conn)


class OperatorCommands:
    """The operator command handlers; each records who did what, why and when.

    Args:
        state: the owner of the state.
        views: the read-only views (for `admin_machine_state`).
        operator_token: the configured token (read at each command: a reload may change
            it); empty disables the commands that need it.
    """

    def __init__(
        self, state: ServiceState, views: StateViews, operator_token: Callable[[], str]
    ) -> None:
        self._state = state
        self._views = views
        self._operator_token = operator_token

    def handlers(self) -> dict[str, Callable[[Any, Any], Awaitable[Any]]]:
        """Command name -> handler, for the command table."""
        return {
            "admin_set_board_service": self.set_board_service,
            "admin_set_link_service": self.set_link_service,
            "admin_drain_machine": self.drain,
            "admin_undrain_machine": self.drain,
            "admin_destroy_job": self.destroy_job,
            "admin_audit_log": self.audit_log,
            "admin_machine_state": self.machine_state,
        }

    def _check_token(self, command: str, token: str | None) -> None:
        a.check_operator_token(command, token, self._operator_token() or None)

    def _record(
        self,
        action: str,
        target: str,
        args: a.AdminSetBoardServiceArgs | a.AdminDrainMachineArgs | a.AdminDestroyJobArgs,
        conn: Any,
        detail: dict[str, Any],
    ) -> a.AuditEntry:
        return self._state.record_audit(
            action=action,
            target=target,
            operator=args.operator,
            peer=_peer(conn),
            reason=args.reason,
            detail=detail,
        )

    async def set_board_service(self, args: a.AdminSetBoardServiceArgs, conn: Any) -> a.AuditEntry:
        action = "admin_set_board_service"
        self._check_token(action, args.token)
        state = self._state
        machine = state.require_machine(args.machine)
        board = state.require_board(machine, args.x, args.y, args.z)
        state.set_board_service(
            machine, board, args.in_service, args.reason, _changed_by(args, conn)
        )
        where = "back in service" if args.in_service else "out of service"
        entry = self._record(
            action,
            f"{machine.name} board ({board.x}, {board.y}, {board.z}) {where}",
            args,
            conn,
            {"machine": machine.name, "board": list(board), "in_service": args.in_service},
        )
        await state.commit_machine(machine.name, may_allocate=args.in_service)
        return entry

    async def set_link_service(self, args: a.AdminSetLinkServiceArgs, conn: Any) -> a.AuditEntry:
        action = "admin_set_link_service"
        self._check_token(action, args.token)
        state = self._state
        machine = state.require_machine(args.machine)
        board = state.require_board(machine, args.x, args.y, args.z)
        link = Link(args.link)
        state.set_link_service(
            machine, board, link, args.in_service, args.reason, _changed_by(args, conn)
        )
        where = "back in service" if args.in_service else "out of service"
        entry = self._record(
            action,
            f"{machine.name} board ({board.x}, {board.y}, {board.z}) link {link.name} {where}",
            args,
            conn,
            {
                "machine": machine.name,
                "board": list(board),
                "link": int(link),
                "in_service": args.in_service,
            },
        )
        await state.commit_machine(machine.name, may_allocate=args.in_service)
        return entry

    async def drain(self, args: a.AdminDrainMachineArgs, conn: Any) -> a.AuditEntry:
        is_undrain = isinstance(args, a.AdminUndrainMachineArgs)
        action = "admin_undrain_machine" if is_undrain else "admin_drain_machine"
        self._check_token(action, args.token)
        state = self._state
        machine = state.require_machine(args.machine)
        state.set_draining(machine, not is_undrain, args.reason, _changed_by(args, conn))
        entry = self._record(
            action, f"machine {machine.name}", args, conn, {"machine": machine.name}
        )
        await state.commit_machine(machine.name, may_allocate=is_undrain)
        return entry

    async def destroy_job(self, args: a.AdminDestroyJobArgs, conn: Any) -> a.AuditEntry:
        action = "admin_destroy_job"
        self._check_token(action, args.token)
        record = self._state.live_job(args.job_id)
        if record is None:
            raise AdminTargetError(f"job {args.job_id}", "is not a live job")
        entry = self._record(
            action,
            f"job {record.job_id} of {record.owner}",
            args,
            conn,
            {"job_id": record.job_id},
        )
        await self._state.destroy(record.job_id, args.reason, reschedule=True)
        return entry

    async def audit_log(self, args: a.AuditLogArgs, conn: Any) -> list[a.AuditEntry]:
        self._check_token("admin_audit_log", args.token)
        await self._state.flush()
        return self._state.audit_entries(args.limit)

    async def machine_state(self, args: a.AdminMachineStateArgs, conn: Any) -> a.MachineState:
        await self._state.flush()
        state = self._views.machine_state(args.machine)
        if state is None:
            raise AdminTargetError(f"machine {args.machine!r}")
        return state
