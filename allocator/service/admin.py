"""The operator commands (`protocol.admin`) and their audit log.

Boards and links taken out of service, machines drained, jobs destroyed with a reason; each
one is recorded in the audit log in the same transaction as its effect. A drained machine
allocates nothing: queued jobs that could only run there wait, running jobs keep their boards.
"""

from __future__ import annotations

import logging
from typing import Any

from allocator import jobs as jobs_
from allocator.errors import AllocatorError
from allocator.machine import Machine
from allocator.service.views import StateViews
from allocator.store import (
    AppendAudit,
    LinkStatus,
    MachineStatus,
    PutBoardStatus,
    PutLinkStatus,
    PutMachineStatus,
)
from allocator.store import AuditEntry as StoredAudit
from allocator.store import BoardStatus as StoredBoardStatus
from machine_models.geometry import BoardXYZ, Link
from protocol import admin as a

__all__ = ["AdminTargetError", "OperatorCommands"]

log = logging.getLogger("allotment.service")


class AdminTargetError(AllocatorError):
    """An operator command named a machine, board or job that is not there; nothing changed.

    The operator should check the name (`allotment ps`, `allotment map`).
    """

    def __init__(self, target: str, problem: str = "does not exist") -> None:
        super().__init__(f"{target} {problem}")
        self.target = target


class OperatorCommands(StateViews):
    """The operator command handlers; each records who did what, why and when."""

    # --- operator commands -------------------------------------------------------------

    def _check_token(self, command: str, token: str | None) -> None:
        a.check_operator_token(command, token, self._config.server.operator_token or None)

    def _machine(self, name: str) -> Machine:
        machine = self._machines.get(name)
        if machine is None:
            raise AdminTargetError(f"machine {name!r}")
        return machine

    def _board_of(self, machine: Machine, x: int, y: int, z: int) -> BoardXYZ:
        board = BoardXYZ(x, y, z)
        if not machine.is_inside(board):
            raise AdminTargetError(f"board ({x}, {y}, {z}) of machine {machine.name!r}")
        return board

    def _record(
        self,
        action: str,
        target: str,
        args: a.AdminSetBoardServiceArgs | a.AdminDrainMachineArgs | a.AdminDestroyJobArgs,
        conn: Any,
        detail: dict[str, Any],
    ) -> a.AuditEntry:
        """Stage an audit entry for an operator action and return it."""
        peer = str(getattr(conn, "peer_host", "") or "")
        entry = a.AuditEntry(
            audit_id=self._next_audit_id,
            timestamp_s=self._wall_clock(),
            operator=args.operator,
            peer=peer,
            action=action,
            target=target,
            reason=args.reason,
        )
        self._next_audit_id += 1
        self._audit.append(entry)
        self._store.stage(
            AppendAudit(
                StoredAudit(
                    at=entry.timestamp_s,
                    who=args.operator or peer,
                    action=action,
                    target=target,
                    reason=args.reason,
                    detail={"operator": args.operator, "peer": peer, **detail},
                    audit_id=entry.audit_id,
                )
            )
        )
        if self._observer is not None:
            self._observer.admin_action(action)
        log.info("operator %s from %s: %s %s: %s", args.operator, peer, action, target, args.reason)
        return entry

    async def _commit_operator_change(self, machine_name: str, *, may_allocate: bool) -> None:
        """Commit an operator's change to a machine; one that frees capacity may allocate."""
        changed: list[int] = []
        machines = {machine_name}
        if may_allocate:
            machines |= self._schedule(changed)
        await self._commit(changed, machines)

    async def _admin_set_board_service(
        self, args: a.AdminSetBoardServiceArgs, conn: Any
    ) -> a.AuditEntry:
        action = "admin_set_board_service"
        self._check_token(action, args.token)
        machine = self._machine(args.machine)
        board = self._board_of(machine, args.x, args.y, args.z)
        status = StoredBoardStatus(
            machine.name,
            board,
            args.in_service,
            args.reason,
            self._wall_clock(),
            _changed_by(args, conn),
        )
        self._board_status[(machine.name, board)] = status
        self._store.stage(PutBoardStatus(status))
        self._apply_out_of_service(machine.name)
        where = "back in service" if args.in_service else "out of service"
        entry = self._record(
            action,
            f"{machine.name} board ({board.x}, {board.y}, {board.z}) {where}",
            args,
            conn,
            {"machine": machine.name, "board": list(board), "in_service": args.in_service},
        )
        await self._commit_operator_change(machine.name, may_allocate=args.in_service)
        return entry

    async def _admin_set_link_service(
        self, args: a.AdminSetLinkServiceArgs, conn: Any
    ) -> a.AuditEntry:
        action = "admin_set_link_service"
        self._check_token(action, args.token)
        machine = self._machine(args.machine)
        board = self._board_of(machine, args.x, args.y, args.z)
        link = Link(args.link)
        status = LinkStatus(
            machine.name,
            board,
            link,
            args.in_service,
            args.reason,
            self._wall_clock(),
            _changed_by(args, conn),
        )
        self._link_status[(machine.name, board, link)] = status
        self._store.stage(PutLinkStatus(status))
        self._apply_out_of_service(machine.name)
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
        await self._commit_operator_change(machine.name, may_allocate=args.in_service)
        return entry

    async def _admin_drain(self, args: a.AdminDrainMachineArgs, conn: Any) -> a.AuditEntry:
        is_undrain = isinstance(args, a.AdminUndrainMachineArgs)
        action = "admin_undrain_machine" if is_undrain else "admin_drain_machine"
        self._check_token(action, args.token)
        machine = self._machine(args.machine)
        if is_undrain:
            self._draining.discard(machine.name)
        else:
            self._draining.add(machine.name)
        self._store.stage(
            PutMachineStatus(
                MachineStatus(
                    machine.name,
                    not is_undrain,
                    args.reason,
                    self._wall_clock(),
                    _changed_by(args, conn),
                )
            )
        )
        entry = self._record(
            action,
            f"machine {machine.name}",
            args,
            conn,
            {"machine": machine.name},
        )
        await self._commit_operator_change(machine.name, may_allocate=is_undrain)
        return entry

    async def _admin_destroy_job(self, args: a.AdminDestroyJobArgs, conn: Any) -> a.AuditEntry:
        action = "admin_destroy_job"
        self._check_token(action, args.token)
        job = self._live.get(args.job_id) if args.job_id is not None else None
        if job is None:
            raise AdminTargetError(f"job {args.job_id}", "is not a live job")
        entry = self._record(
            action,
            f"job {job.record.job_id} of {job.record.owner}",
            args,
            conn,
            {"job_id": job.record.job_id},
        )
        changed: list[int] = []
        machines: set[str] = set()
        self._end(job, jobs_.destroy(job.record, self._clock.now(), args.reason), changed, machines)
        machines |= self._schedule(changed)
        await self._commit(changed, machines)
        return entry

    async def _admin_audit_log(self, args: a.AuditLogArgs, conn: Any) -> list[a.AuditEntry]:
        self._check_token("admin_audit_log", args.token)
        await self._store.flush()
        newest = list(self._audit)[-args.limit :]
        newest.reverse()
        return newest

    async def _admin_machine_state(
        self, args: a.AdminMachineStateArgs, conn: Any
    ) -> a.MachineState:
        await self._store.flush()
        state = self.machine_state(args.machine)
        if state is None:
            raise AdminTargetError(f"machine {args.machine!r}")
        return state


def _changed_by(args: a.AdminSetBoardServiceArgs | a.AdminDrainMachineArgs, conn: Any) -> str:
    """Who an operator change is recorded as: the operator named, else the peer's host."""
    return args.operator or str(getattr(conn, "peer_host", ""))
