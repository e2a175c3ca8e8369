"""The spalloc v1 commands: job creation, keepalive, state, power, destroy, lookups.

A family of handlers over `ServiceState`: each translates a bound request into calls of the
state's methods and shapes the reply as the reference server does (the reply models in
`protocol.messages` describe them; the tests hold every reply against its model).

A handler returns its reply, or a future of it when it must wait (for a commit, or for
the changes of the job it reads to be durable): the change is made at once and the state's
committer resolves the future after the commit, so a request that waits costs no task. The
reads return at once when nothing they depend on is pending, which is most of the time.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from allocator.jobs import JobRecord, JobState
from allocator.locate import Location, job_connections, locate_board, locate_chip, locate_job_chip
from allocator.machine import Machine
from allocator.requests import JobRequest
from allocator.service.state import ServiceState
from machine_models.geometry import BoardCFB, BoardXYZ, ChipXY
from protocol import messages as m
from protocol.codec import EncodedJson, encode_json
from protocol.commands import V1_VERSION, allotment_version_reply

__all__ = ["V1Commands"]


@functools.lru_cache(maxsize=256, typed=True)
def _request(
    args: tuple[int, ...],
    machine: str | None,
    tags: tuple[str, ...] | None,
    min_ratio: float,
    max_dead_boards: int | None,
    max_dead_links: int | None,
    require_torus: bool,
) -> JobRequest:
    """`JobRequest.from_args`, remembered: clients send the same few requests over and over.

    Takes the bound (so typed and hashable) arguments of create_job; a request that is
    refused raises every time, as it is not remembered.
    """
    return JobRequest.from_args(
        args,
        machine=machine,
        tags=tags,
        min_ratio=min_ratio,
        max_dead_boards=max_dead_boards,
        max_dead_links=max_dead_links,
        require_torus=require_torus,
    )


_MAX_CACHED_MACHINE_INFOS = 4096
_InfoKey = tuple[str, tuple[BoardXYZ, ...], int, int]

_UNKNOWN_STATE = {
    "state": int(JobState.UNKNOWN),
    "power": None,
    "keepalive": None,
    "reason": None,
    "start_time": None,
    "keepalivehost": None,
}
_NO_MACHINE_INFO = {
    "width": None,
    "height": None,
    "connections": None,
    "machine_name": None,
    "boards": None,
}


def _nothing() -> None:
    return None


def _host(conn: Any) -> str | None:
    host: str | None = getattr(conn, "peer_host", None)
    return host


class V1Commands:
    """The v1 command handlers, answered through the state's methods."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state
        # (machine, boards, width, height) -> get_job_machine_info's reply, encoded: the
        # same regions recur, and the reply follows from them (and the machine) alone
        self._machine_infos: dict[_InfoKey, tuple[Machine, EncodedJson]] = {}

    def handlers(self) -> dict[str, Any]:
        """Command name -> handler, for the command table."""
        return {
            "version": self.version,
            "allotment_version": self.allotment_version,
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
        }

    def version(self, args: m.VersionArgs, conn: Any) -> str:
        return V1_VERSION

    def allotment_version(self, args: m.AllotmentVersionArgs, conn: Any) -> m.AllotmentVersionReply:
        return allotment_version_reply()

    def create_job(self, args: m.CreateJobArgs, conn: Any) -> asyncio.Future[int]:
        """Queue (or allocate at once) a job; a request that can never fit is destroyed."""
        request = _request(
            args.dims,
            args.machine,
            args.tags,
            args.min_ratio,
            args.max_dead_boards,
            args.max_dead_links,
            args.require_torus,
        )
        return self._state.create_job_nowait(
            request,
            owner=args.owner,
            keepalive_s=args.keepalive_s,
            args=tuple(args.args),
            kwargs=args.listed_kwargs(),
            host=_host(conn),
        )

    def job_keepalive(self, args: m.JobKeepaliveArgs, conn: Any) -> asyncio.Future[None] | None:
        self._state.touch(args.job_id, _host(conn))
        if self._state.is_durable(args.job_id):
            return None
        return self._state.after_commit(_nothing)

    def get_job_state(self, args: m.GetJobStateArgs, conn: Any) -> Any:
        record = self._state.touch(args.job_id, _host(conn))
        if self._state.is_durable(args.job_id):
            return self._job_state(args.job_id, record)
        job_id = args.job_id
        return self._state.after_commit(
            lambda: self._job_state(job_id, self._state.live_job(job_id))
        )

    def _job_state(self, job_id: int | None, record: JobRecord | None) -> dict[str, Any]:
        if record is not None:
            return {
                "state": int(record.state),
                "power": record.power,
                "keepalive": record.keepalive_s,
                "reason": None,
                "start_time": record.created_at,
                "keepalivehost": record.keepalivehost,
            }
        retired = self._state.job_record(job_id)
        if retired is None:
            return dict(_UNKNOWN_STATE)
        return {**_UNKNOWN_STATE, "state": int(JobState.DESTROYED), "reason": retired.reason}

    def get_job_machine_info(self, args: m.GetJobMachineInfoArgs, conn: Any) -> Any:
        self._state.touch(args.job_id, _host(conn))
        return self._state.when_durable(
            args.job_id, functools.partial(self._machine_info, args.job_id)
        )

    def _machine_info(self, job_id: int | None) -> dict[str, Any] | EncodedJson:
        record = self._state.live_job(job_id)
        if record is None or not record.is_allocated:
            return dict(_NO_MACHINE_INFO)
        assert record.machine_name is not None
        assert record.width_chips is not None
        assert record.height_chips is not None
        machine = self._state.machine(record.machine_name)
        assert machine is not None
        key = (record.machine_name, record.boards, record.width_chips, record.height_chips)
        cached = self._machine_infos.get(key)
        if cached is not None and cached[0] is machine:  # not a machine since reloaded
            return cached[1]
        if len(self._machine_infos) >= _MAX_CACHED_MACHINE_INFOS:
            self._machine_infos.clear()
        info = encode_json(
            {
                "width": record.width_chips,
                "height": record.height_chips,
                "connections": job_connections(machine, record.boards),
                "machine_name": record.machine_name,
                "boards": [list(b) for b in record.boards],
            }
        )
        self._machine_infos[key] = (machine, info)
        return info

    def power_on_job_boards(self, args: m.PowerOnJobBoardsArgs, conn: Any) -> asyncio.Future[None]:
        return self._state.set_power_nowait(args.job_id, True, _host(conn))

    def power_off_job_boards(
        self, args: m.PowerOffJobBoardsArgs, conn: Any
    ) -> asyncio.Future[None]:
        return self._state.set_power_nowait(args.job_id, False, _host(conn))

    def destroy_job(self, args: m.DestroyJobArgs, conn: Any) -> asyncio.Future[None]:
        return self._state.destroy_nowait(args.job_id, args.reason)

    def list_jobs(self, args: m.ListJobsArgs, conn: Any) -> asyncio.Future[list[dict[str, Any]]]:
        return self._state.after_commit(self._job_list)

    def _job_list(self) -> list[dict[str, Any]]:
        return [
            {
                "job_id": r.job_id,
                "owner": r.owner,
                "start_time": r.created_at,
                "keepalive": r.keepalive_s,
                "state": int(r.state),
                "power": r.power,
                "args": list(r.args),
                "kwargs": dict(r.kwargs),
                "allocated_machine_name": r.machine_name,
                "boards": [list(b) for b in r.boards] if r.is_allocated else None,
                "keepalivehost": r.keepalivehost or "",
            }
            for r in self._state.live_jobs()
        ]

    def list_machines(self, args: m.ListMachinesArgs, conn: Any) -> Any:
        """The machines, once the boards and links taken out of service are durable."""
        return self._state.when_service_durable(self._machine_list)

    def _machine_list(self) -> list[dict[str, Any]]:
        state = self._state
        return [
            {
                "name": mc.name,
                "tags": sorted(mc.tags),
                "width": mc.width_triads,
                "height": mc.height_triads,
                "dead_boards": [
                    list(b)
                    for b in sorted({*mc.dead_boards, *state.out_of_service_boards(mc.name)})
                ],
                "dead_links": [
                    [*b, int(link)]
                    for b, link in sorted({*mc.dead_links, *state.out_of_service_links(mc.name)})
                ],
            }
            for mc in state.machines.values()
        ]

    def get_board_position(self, args: m.GetBoardPositionArgs, conn: Any) -> list[int] | None:
        machine = self._state.machine(args.machine_name)
        if machine is None:
            return None
        cfb = machine.physical(BoardXYZ(args.x, args.y, args.z))
        return None if cfb is None else list(cfb)

    def get_board_at_position(self, args: m.GetBoardAtPositionArgs, conn: Any) -> list[int] | None:
        machine = self._state.machine(args.machine_name)
        if machine is None:
            return None
        xyz = machine.logical(BoardCFB(args.cabinet, args.frame, args.board))
        return None if xyz is None else list(xyz)

    async def where_is(self, args: m.WhereIsArgs, conn: Any) -> dict[str, Any] | None:
        state = self._state
        await state.flush()
        location: Location | None = None
        if isinstance(args, m.WhereIsJobChipArgs):
            place = state.job_place(args.job_id)
            if place is not None:
                machine = state.machine(place.machine_name)
                assert machine is not None
                location = locate_job_chip(
                    machine, place, ChipXY(args.chip_x, args.chip_y), state.job_on_board
                )
        else:
            found = state.machine(args.machine)
            if found is None:
                return None
            if isinstance(args, m.WhereIsBoardArgs):
                board = BoardXYZ(args.x, args.y, args.z)
                location = locate_board(found, board, state.job_on_board)
            elif isinstance(args, m.WhereIsPhysicalArgs):
                logical = found.logical(BoardCFB(args.cabinet, args.frame, args.board))
                if logical is not None:
                    location = locate_board(found, logical, state.job_on_board)
            else:
                chip = ChipXY(args.chip_x, args.chip_y)
                location = locate_chip(found, chip, state.job_on_board)
        return None if location is None else location.to_wire()
