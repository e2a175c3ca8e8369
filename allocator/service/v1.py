"""The spalloc v1 commands: job creation, keepalive, state, power, destroy, lookups."""

from __future__ import annotations

import functools
import logging
from typing import Any

from allocator import jobs as jobs_
from allocator.jobs import JobRecord, JobState
from allocator.locate import (
    JobPlace,
    Location,
    job_connections,
    locate_board,
    locate_chip,
    locate_job_chip,
)
from allocator.requests import JobRequest
from allocator.service.core import Live, ServiceCore, job_log
from allocator.store import (
    SetNextJobId,
)
from machine_models.geometry import BoardCFB, BoardXYZ, ChipXY
from protocol import messages as m
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


class V1Commands(ServiceCore):
    """The v1 command handlers, answered from the shared state."""

    # --- v1 commands ------------------------------------------------------------------

    async def _version_cmd(self, args: m.VersionArgs, conn: Any) -> str:
        return V1_VERSION

    async def _allotment_version(
        self, args: m.AllotmentVersionArgs, conn: Any
    ) -> m.AllotmentVersionReply:
        return allotment_version_reply()

    async def create_job(self, args: m.CreateJobArgs, conn: Any) -> int:
        """Queue (or allocate at once) a job; a request that can never fit is destroyed."""
        request = _request(
            args.args,
            args.machine,
            args.tags,
            args.min_ratio,
            args.max_dead_boards,
            args.max_dead_links,
            args.require_torus,
        )
        now = self._clock.now()
        job_id = self._next_job_id
        self._next_job_id += 1
        self._store.stage(SetNextJobId(self._next_job_id))
        record = JobRecord(
            job_id=job_id,
            owner=args.owner,
            created_at=now,
            keepalive_s=args.keepalive_s,
            args=tuple(args.args),
            kwargs=args.listed_kwargs(),
            keepalivehost=getattr(conn, "peer_host", None),
        )
        candidates = self._candidates(request)
        if job_log.isEnabledFor(logging.INFO):
            job_log.info(
                "job %d created by %s from %s: %s",
                job_id,
                args.owner,
                record.keepalivehost or "?",
                request.describe(),
            )
        changed = [job_id]
        machines: set[str] = set()
        if not candidates:
            self._retire(jobs_.cancel(record, now, jobs_.REASON_NO_SUITABLE_MACHINES))
        else:
            job = Live(record, request, candidates, now, now)
            self._live[job_id] = job
            self._queue[job_id] = job
            self._put(job, record)
            machines = self._schedule(changed)
        await self._commit(changed, machines)
        return job_id

    async def job_keepalive(self, args: m.JobKeepaliveArgs, conn: Any) -> None:
        job = self._live.get(args.job_id) if args.job_id is not None else None
        if job is not None:
            self._touch(job, conn)
        await self._durable(args.job_id)

    async def get_job_state(self, args: m.GetJobStateArgs, conn: Any) -> dict[str, Any]:
        job = self._live.get(args.job_id) if args.job_id is not None else None
        if job is not None:
            self._touch(job, conn)
            await self._durable(args.job_id)
            r = job.record
            return {
                "state": int(r.state),
                "power": r.power,
                "keepalive": r.keepalive_s,
                "reason": None,
                "start_time": r.created_at,
                "keepalivehost": r.keepalivehost,
            }
        await self._durable(args.job_id)
        retired = self._retired.get(args.job_id) if args.job_id is not None else None
        return {
            "state": int(JobState.DESTROYED if retired is not None else JobState.UNKNOWN),
            "power": None,
            "keepalive": None,
            "reason": retired.reason if retired is not None else None,
            "start_time": None,
            "keepalivehost": None,
        }

    async def get_job_machine_info(
        self, args: m.GetJobMachineInfoArgs, conn: Any
    ) -> dict[str, Any]:
        job = self._live.get(args.job_id) if args.job_id is not None else None
        if job is not None:
            self._touch(job, conn)
        await self._durable(args.job_id)
        if job is None or not job.record.is_allocated:
            return {
                "width": None,
                "height": None,
                "connections": None,
                "machine_name": None,
                "boards": None,
            }
        r = job.record
        assert r.machine_name is not None
        machine = self._machines[r.machine_name]
        return {
            "width": r.width_chips,
            "height": r.height_chips,
            "connections": job_connections(machine, r.boards),
            "machine_name": r.machine_name,
            "boards": [list(b) for b in r.boards],
        }

    async def _set_power(self, job_id: int | None, is_on: bool, conn: Any) -> None:
        job = self._live.get(job_id) if job_id is not None else None
        changed: list[int] = []
        if job is not None:
            self._touch(job, conn)
            if job.record.is_allocated:
                self._put(job, jobs_.set_power(job.record, is_on))
                self._start_power(job, is_on)
                changed.append(job.record.job_id)
        await self._commit(changed, ())

    async def power_on_job_boards(self, args: m.PowerOnJobBoardsArgs, conn: Any) -> None:
        await self._set_power(args.job_id, True, conn)

    async def power_off_job_boards(self, args: m.PowerOffJobBoardsArgs, conn: Any) -> None:
        await self._set_power(args.job_id, False, conn)

    async def destroy_job(self, args: m.DestroyJobArgs, conn: Any) -> None:
        await self.destroy(args.job_id, args.reason)

    async def destroy(self, job_id: int | None, reason: str | None) -> bool:
        """Destroy a live job (no-op for an unknown or destroyed one); True if it was live."""
        job = self._live.get(job_id) if job_id is not None else None
        changed: list[int] = []
        machines: set[str] = set()
        if job is not None:
            self._end(job, jobs_.destroy(job.record, self._clock.now(), reason), changed, machines)
        await self._commit(changed, machines)
        return job is not None

    async def list_jobs(self, args: m.ListJobsArgs, conn: Any) -> list[dict[str, Any]]:
        await self._store.flush()
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
            for r in (job.record for job in self._live.values())
        ]

    async def list_machines(self, args: m.ListMachinesArgs, conn: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": mc.name,
                "tags": sorted(mc.tags),
                "width": mc.width_triads,
                "height": mc.height_triads,
                "dead_boards": [
                    list(b) for b in sorted({*mc.dead_boards, *self.out_of_service_boards(mc.name)})
                ],
                "dead_links": [
                    [*b, int(link)]
                    for b, link in sorted({*mc.dead_links, *self.out_of_service_links(mc.name)})
                ],
            }
            for mc in self._machines.values()
        ]

    async def get_board_position(self, args: m.GetBoardPositionArgs, conn: Any) -> list[int] | None:
        machine = self._machines.get(args.machine_name)
        if machine is None:
            return None
        cfb = machine.physical(BoardXYZ(args.x, args.y, args.z))
        return None if cfb is None else list(cfb)

    async def get_board_at_position(
        self, args: m.GetBoardAtPositionArgs, conn: Any
    ) -> list[int] | None:

        machine = self._machines.get(args.machine_name)
        if machine is None:
            return None
        xyz = machine.logical(BoardCFB(args.cabinet, args.frame, args.board))
        return None if xyz is None else list(xyz)

    def _job_of_board(self, machine_name: str, board: BoardXYZ) -> JobPlace | None:
        job_id = self._board_owner.get((machine_name, board))
        job = self._live.get(job_id) if job_id is not None else None
        if job is None or not job.record.is_allocated:
            return None
        return job.place()

    async def where_is(self, args: m.WhereIsArgs, conn: Any) -> dict[str, Any] | None:
        await self._store.flush()
        location: Location | None = None
        if isinstance(args, m.WhereIsJobChipArgs):
            job = self._live.get(args.job_id) if args.job_id is not None else None
            if job is not None and job.record.is_allocated:
                place = job.place()
                location = locate_job_chip(
                    self._machines[place.machine_name],
                    place,
                    ChipXY(args.chip_x, args.chip_y),
                    self._job_of_board,
                )
        else:
            machine = self._machines.get(args.machine)
            if machine is None:
                return None
            if isinstance(args, m.WhereIsBoardArgs):
                location = locate_board(
                    machine, BoardXYZ(args.x, args.y, args.z), self._job_of_board
                )
            elif isinstance(args, m.WhereIsPhysicalArgs):
                from machine_models.geometry import BoardCFB

                board = machine.logical(BoardCFB(args.cabinet, args.frame, args.board))
                if board is not None:
                    location = locate_board(machine, board, self._job_of_board)
            else:
                location = locate_chip(
                    machine, ChipXY(args.chip_x, args.chip_y), self._job_of_board
                )
        return None if location is None else location.to_wire()
