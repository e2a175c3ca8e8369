"""The service: sole owner of the mutable state (jobs, queue, board occupancy, power).

Every request runs synchronously against the in-memory state (the event loop makes that
atomic), stages the durable changes it made, and returns only after they are committed::

    request --> compute and apply in memory --> stage changes --> await flush() --> reply
                                                                        |
                                              notifications, events <--+ (after the commit)

A read waits for the changes staged before it (`flush()` is immediate when nothing is
pending), so no client ever sees a state that is not durable. Timers (keepalive expiry,
boards cooling down after power-off) and the modelled board controllers run as tasks of
the service's task group and take time from the injected `Clock`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from allocator import jobs as jobs_
from allocator.clock import Clock
from allocator.config import ServerConfig
from allocator.errors import AllocatorError
from allocator.jobs import JobRecord, JobState
from allocator.locate import (
    JobPlace,
    Location,
    job_connections,
    locate_board,
    locate_chip,
    locate_job_chip,
)
from allocator.machine import FrameCF, Machine
from allocator.packing import Allocation, MachineAllocator
from allocator.power import BmpKey, PowerModel, PowerRequest
from allocator.requests import JobRequest
from allocator.scheduler import QueuedJob, Scheduler
from allocator.store import (
    ClaimBoards,
    ForgetJobs,
    PutJob,
    ReleaseBoards,
    SetNextJobId,
    Store,
    StoredState,
)
from machine_models.geometry import BoardXYZ, ChipXY
from protocol import messages as m
from protocol.commands import V1_VERSION, allotment_version_reply

__all__ = ["V1_VERSION", "Service"]

log = logging.getLogger("allotment.service")


Listener = Callable[[tuple[int, ...], tuple[str, ...]], None]


@dataclass(slots=True)
class _Live:
    """A live job: its durable record plus what only lives in memory."""

    record: JobRecord
    request: JobRequest | None
    candidates: tuple[str, ...]
    queued_at: float
    last_touch: float

    def place(self) -> JobPlace:
        assert self.record.machine_name is not None
        assert self.record.width_chips is not None
        assert self.record.height_chips is not None
        return JobPlace(
            self.record.job_id,
            self.record.machine_name,
            frozenset(self.record.boards),
            self.record.width_chips,
            self.record.height_chips,
        )


class Service:
    """Jobs, queue, allocations and power for every configured machine.

    Args:
        config: the validated configuration (machines in priority order and settings).
        store: the durable store, already opened.
        clock: where time comes from (a `FakeClock` in tests).
    """

    def __init__(self, config: ServerConfig, store: Store, clock: Clock) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._machines: dict[str, Machine] = {mc.name: mc for mc in config.machines}
        self._allocators: dict[str, MachineAllocator] = {
            name: MachineAllocator(mc) for name, mc in self._machines.items()
        }
        self._scheduler = Scheduler(self._allocators, config.server.starvation_s)
        self._live: dict[int, _Live] = {}
        self._retired: OrderedDict[int, JobRecord] = OrderedDict()
        self._next_job_id = 1
        self._board_owner: dict[tuple[str, BoardXYZ], int] = {}
        # (free_at, machine, job_id): boards of destroyed jobs cooling down after power-off
        self._cooling: list[tuple[float, str, int]] = []
        self._listeners: list[Listener] = []
        # job id -> store watermark of the job's latest staged change: a read about one
        # job waits only for that job's own changes to be durable.
        self._marks: dict[int, int] = {}
        self._power: PowerModel | None = None
        # destroyed jobs whose boards are being powered off: job id -> machine name
        self._powering_off: dict[int, str] = {}
        self._task_group: asyncio.TaskGroup | None = None
        self._handlers: dict[str, Callable[[Any, Any], Awaitable[Any]]] = {
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
        }

    def __repr__(self) -> str:
        return (
            f"<Service machines={list(self._machines)} live={len(self._live)}"
            f" queued={sum(1 for j in self._live.values() if j.record.state is JobState.QUEUED)}"
            f" retired={len(self._retired)} next_job_id={self._next_job_id}>"
        )

    # --- wiring -----------------------------------------------------------------------

    def handler_for(self, command: str) -> Callable[[Any, Any], Awaitable[Any]] | None:
        """The coroutine that answers a command, or None for an unknown command."""
        return self._handlers.get(command)

    def add_handler(self, command: str, handler: Callable[[Any, Any], Awaitable[Any]]) -> None:
        """Serve an extension command with ``handler(arguments, connection)``."""
        self._handlers[command] = handler

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(job_ids, machine_names)`` after each commit that changed them."""
        self._listeners.append(listener)

    @property
    def machines(self) -> dict[str, Machine]:
        return dict(self._machines)

    @property
    def live_jobs(self) -> list[JobRecord]:
        return [job.record for job in self._live.values()]

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Restore the stored state, then run timers and board controllers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._task_group = tg
            self._power = PowerModel(
                self._clock,
                power_on_delay_s=self._config.power.power_on_delay_s,
                power_off_delay_s=self._config.power.power_off_delay_s,
                on_job_idle=self._job_power_idle,
            )
            await self._restore(await self._store.load())
            tg.create_task(self._power.run(), name="power")
            tg.create_task(self._timers(), name="timers")
            if on_started is not None:
                on_started()

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
        self._scheduler = Scheduler(self._allocators, config.server.starvation_s)
        for job in list(self._live.values()):
            if job.record.state is JobState.QUEUED and job.request is not None:
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

    # --- restore ----------------------------------------------------------------------

    async def _restore(self, state: StoredState) -> None:
        now = self._clock.now()
        self._next_job_id = max(state.next_job_id, 1)
        changed_jobs: list[int] = []
        for record in sorted(state.jobs, key=lambda r: r.job_id):
            self._next_job_id = max(self._next_job_id, record.job_id + 1)
            if not record.is_live:
                self._retire(record, stage=False)
                continue
            machine = self._machines.get(record.machine_name or "")
            if record.is_allocated and machine is None:
                self._retire(jobs_.cancel(record, now, jobs_.REASON_MACHINE_REMOVED))
                changed_jobs.append(record.job_id)
                continue
            request = self._request_of(record)
            job = _Live(record, request, (), record.created_at, now)
            self._live[record.job_id] = job
            if record.is_allocated:
                assert record.machine_name is not None
                self._allocators[record.machine_name].restore(record.job_id, record.boards)
                for board in record.boards:
                    self._board_owner[(record.machine_name, board)] = record.job_id
                if record.state is JobState.POWER:
                    # The controller's work was lost with the old process: do it again.
                    self._start_power(job, bool(record.power))
            else:
                job.candidates = self._candidates(request) if request is not None else ()
        # Claims whose job is gone: boards that were cooling down; give them a full cool-down.
        for claim in state.claims:
            if claim.job_id not in self._live:
                allocator = self._allocators.get(claim.machine)
                if allocator is None:
                    self._store.stage(ReleaseBoards(claim.machine, tuple(claim.boards)))
                    continue
                allocator.restore(claim.job_id, claim.boards)
                heapq.heappush(
                    self._cooling,
                    (now + self._config.server.seconds_before_free, claim.machine, claim.job_id),
                )
        self._schedule(changed_jobs)
        await self._commit(changed_jobs, ())

    def _request_of(self, record: JobRecord) -> JobRequest | None:
        try:
            return JobRequest.from_args(record.args, **dict(record.kwargs))
        except AllocatorError:
            return None

    # --- commits and announcements ----------------------------------------------------

    async def _commit(self, job_ids: Iterable[int], machine_names: Iterable[str]) -> None:
        await self._store.flush()
        jobs = tuple(job_ids)
        machines = tuple(machine_names)
        if jobs or machines:
            # After the replies of this commit: call_soon runs after the woken handlers.
            asyncio.get_running_loop().call_soon(self._announce, jobs, machines)

    def _announce(self, jobs: tuple[int, ...], machines: tuple[str, ...]) -> None:
        for listener in self._listeners:
            try:
                listener(jobs, machines)
            except Exception:
                log.exception("a change listener failed")

    def _put(self, job: _Live, record: JobRecord) -> None:
        job.record = record
        self._store.stage(PutJob(record))
        self._marks[record.job_id] = self._store.mark

    async def _durable(self, job_id: int | None) -> None:
        """Wait until the latest change of one job is committed (at once if it is)."""
        if job_id is not None:
            await self._store.flush_to(self._marks.get(job_id, 0))

    def _retire(self, record: JobRecord, *, stage: bool = True) -> None:
        self._live.pop(record.job_id, None)
        self._retired[record.job_id] = record
        if stage:
            self._store.stage(PutJob(record))
            self._marks[record.job_id] = self._store.mark
        limit = self._config.server.max_retired_jobs
        forgotten = []
        while len(self._retired) > limit:
            old_id, _ = self._retired.popitem(last=False)
            self._marks.pop(old_id, None)
            forgotten.append(old_id)
        if forgotten:
            self._store.stage(ForgetJobs(tuple(forgotten)))

    # --- candidates, scheduling, allocation ---------------------------------------------

    def _candidates(self, request: JobRequest) -> tuple[str, ...]:
        names = []
        for name, machine in self._machines.items():
            if request.machine is not None:
                if name != request.machine:
                    continue
            elif not set(request.tags) <= set(machine.tags):
                continue
            if self._allocators[name].fits_ever(request):
                names.append(name)
        return tuple(names)

    def _queued(self) -> list[QueuedJob]:
        return [
            QueuedJob(job.record.job_id, job.request, job.candidates, job.queued_at)
            for job in self._live.values()
            if job.record.state is JobState.QUEUED and job.request is not None
        ]

    def _schedule(self, changed: list[int]) -> set[str]:
        """Allocate every queued job that may go now; return the machines that changed."""
        placements = self._scheduler.schedule(self._queued(), self._clock.now())
        machines: set[str] = set()
        for placement in placements:
            job = self._live[placement.job_id]
            self._allocated(job, placement.allocation)
            changed.append(job.record.job_id)
            machines.add(placement.allocation.machine_name)
        return machines

    def _allocated(self, job: _Live, allocation: Allocation) -> None:
        boards = tuple(sorted(allocation.boards))
        record = jobs_.allocate(
            job.record,
            allocation.machine_name,
            boards,
            allocation.width_chips,
            allocation.height_chips,
        )
        self._store.stage(ClaimBoards(allocation.machine_name, boards, job.record.job_id))
        self._put(job, record)
        for board in boards:
            self._board_owner[(allocation.machine_name, board)] = record.job_id
        self._start_power(job, True)

    # --- power ------------------------------------------------------------------------

    def _power_requests(self, record: JobRecord, is_on: bool) -> list[PowerRequest]:
        assert record.machine_name is not None
        machine = self._machines[record.machine_name]
        frames: dict[FrameCF, list[BoardXYZ]] = {}
        for board in record.boards:
            frame = machine.frame_of(board)
            if frame is not None:
                frames.setdefault(frame, []).append(board)
        return [
            PowerRequest(
                job_id=record.job_id,
                bmp=BmpKey(machine.name, frame.cabinet, frame.frame),
                boards=tuple(boards),
                is_power_on=is_on,
            )
            for frame, boards in sorted(frames.items())
        ]

    def _start_power(self, job: _Live, is_on: bool) -> None:
        assert self._power is not None
        requests = self._power_requests(job.record, is_on)
        if requests:
            self._power.submit(requests)
        else:
            self._job_power_idle(job.record.job_id)

    def _job_power_idle(self, job_id: int) -> None:
        """The board controllers finished every request of a job."""
        machine_name = self._powering_off.pop(job_id, None)
        if machine_name is not None:
            self._cool(machine_name, job_id)
            return
        job = self._live.get(job_id)
        if job is None or job.record.state is not JobState.POWER:
            return
        self._put(job, jobs_.power_done(job.record))
        self._background_commit([job_id], ())

    def _power_off_then_cool(self, record: JobRecord) -> None:
        assert record.machine_name is not None
        assert self._power is not None
        self._powering_off[record.job_id] = record.machine_name
        requests = self._power_requests(record, False)
        if requests:
            self._power.submit(requests)
        else:
            self._job_power_idle(record.job_id)

    def _cool(self, machine_name: str, job_id: int) -> None:
        heapq.heappush(
            self._cooling,
            (self._clock.now() + self._config.server.seconds_before_free, machine_name, job_id),
        )
        if self._config.server.seconds_before_free <= 0:
            self._release_cooled()

    def _background_commit(self, job_ids: Iterable[int], machines: Iterable[str]) -> None:
        assert self._task_group is not None
        self._task_group.create_task(self._commit(tuple(job_ids), tuple(machines)))

    # --- timers -----------------------------------------------------------------------

    async def _timers(self) -> None:
        interval = self._config.server.keepalive_check_s
        while True:
            await self._clock.sleep(interval)
            self._expire_jobs()
            self._release_cooled()

    def _expire_jobs(self) -> None:
        now = self._clock.now()
        expired = [
            job
            for job in self._live.values()
            if jobs_.is_expired(job.last_touch, job.record.keepalive_s, now)
        ]
        if not expired:
            return
        changed: list[int] = []
        machines: set[str] = set()
        for job in expired:
            self._end(job, jobs_.expire(job.record, now), changed, machines)
        machines |= self._schedule(changed)
        self._background_commit(changed, machines)

    def _release_cooled(self) -> None:
        now = self._clock.now()
        machines: set[str] = set()
        while self._cooling and self._cooling[0][0] <= now:
            _, machine_name, job_id = heapq.heappop(self._cooling)
            allocator = self._allocators.get(machine_name)
            if allocator is None:
                continue
            boards = allocator.free(job_id)
            for board in boards:
                if self._board_owner.get((machine_name, board)) == job_id:
                    del self._board_owner[(machine_name, board)]
            self._store.stage(ReleaseBoards(machine_name, tuple(sorted(boards))))
            machines.add(machine_name)
        if machines:
            changed: list[int] = []
            machines |= self._schedule(changed)
            self._background_commit(changed, machines)

    def _end(self, job: _Live, record: JobRecord, changed: list[int], machines: set[str]) -> None:
        """Retire a job that was live; power its boards off and let them cool down."""
        was_allocated = job.record.is_allocated
        self._retire(record)
        changed.append(record.job_id)
        if was_allocated and record.machine_name is not None:
            machines.add(record.machine_name)
            self._power_off_then_cool(record)

    # --- helpers for job commands -----------------------------------------------------

    def _touch(self, job: _Live, conn: Any) -> None:
        job.last_touch = self._clock.now()
        host = getattr(conn, "peer_host", None)
        record = jobs_.touch(job.record, host)
        if record is not job.record:
            self._put(job, record)

    # --- v1 commands ------------------------------------------------------------------

    async def _version_cmd(self, args: m.VersionArgs, conn: Any) -> str:
        return V1_VERSION

    async def _allotment_version(
        self, args: m.AllotmentVersionArgs, conn: Any
    ) -> m.AllotmentVersionReply:
        return allotment_version_reply()

    async def create_job(self, args: m.CreateJobArgs, conn: Any) -> int:
        """Queue (or allocate at once) a job; a request that can never fit is destroyed."""
        request = JobRequest.from_args(
            args.args,
            machine=args.machine,
            tags=args.tags,
            min_ratio=args.min_ratio,
            max_dead_boards=args.max_dead_boards,
            max_dead_links=args.max_dead_links,
            require_torus=args.require_torus,
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
        changed = [job_id]
        machines: set[str] = set()
        if not candidates:
            self._retire(jobs_.cancel(record, now, jobs_.REASON_NO_SUITABLE_MACHINES))
        else:
            job = _Live(record, request, candidates, now, now)
            self._live[job_id] = job
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
                "dead_boards": [list(b) for b in sorted(mc.dead_boards)],
                "dead_links": [[*b, int(link)] for b, link in sorted(mc.dead_links)],
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
        from machine_models.geometry import BoardCFB

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


def _same_hardware(a: Machine, b: Machine) -> bool:
    """Whether two descriptions of a machine have the same size, layout and addresses."""
    return (
        a.width_triads == b.width_triads
        and a.height_triads == b.height_triads
        and a.board_locations == b.board_locations
        and a.bmp_ips == b.bmp_ips
        and a.spinnaker_ips == b.spinnaker_ips
    )
