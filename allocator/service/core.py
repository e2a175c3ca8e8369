"""The service's state and job lifecycle: restore, commits, scheduling, power and timers.

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
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from allocator import jobs as jobs_
from allocator.clock import Clock
from allocator.config import ServerConfig
from allocator.errors import AllocatorError
from allocator.jobs import JobRecord, JobState
from allocator.locate import (
    JobPlace,
)
from allocator.machine import FrameCF, Machine
from allocator.packing import Allocation, MachineAllocator
from allocator.power import BmpKey, PowerModel, PowerRequest
from allocator.requests import JobRequest
from allocator.scheduler import QueuedJob, Scheduler
from allocator.store import BoardStatus as StoredBoardStatus
from allocator.store import (
    ClaimBoards,
    ForgetJobs,
    LinkStatus,
    PutJob,
    ReleaseBoards,
    Store,
    StoredState,
)
from machine_models.geometry import BoardXYZ, Link
from protocol import admin as a

__all__ = ["Handler", "Listener", "PowerListener", "ServiceCore", "ServiceObserver"]

log = logging.getLogger("allotment.service")

_FORGET_BATCH = 64
"""Retired jobs past the limit are deleted from the database this many at a time."""


Listener = Callable[[tuple[int, ...], tuple[str, ...]], None]
PowerListener = Callable[[int, bool], None]
"""Told `(job_id, is_on)` whenever a job's boards are switched (or reset): they lose what
they held. Called synchronously, before the change is committed: note it, act on the
change listener's call that follows the commit."""
Handler = Callable[[Any, Any], Awaitable[Any]]
PowerFrames = tuple[tuple[BmpKey, tuple[BoardXYZ, ...]], ...]
"""An allocation's boards grouped by the board controller (BMP) of their frame."""


class ServiceObserver(Protocol):
    """What the service reports as it happens; `allocator.metrics.Metrics` implements it."""

    def queue_wait(self, seconds: float) -> None: ...
    def keepalive_expired(self) -> None: ...
    def power_transition(self, kind: str, n_boards: int = 1) -> None: ...
    def admin_action(self, action: str) -> None: ...


@dataclass(slots=True)
class Live:
    """A live job: its durable record plus what only lives in memory.

    `frames` is set with the allocation (the same for every power-on and power-off).
    """

    record: JobRecord
    request: JobRequest | None
    candidates: tuple[str, ...]
    queued_at: float
    last_touch: float
    frames: PowerFrames = ()

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


class ServiceCore:
    """The mutable state of the service and the job lifecycle the command handlers share.

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
        self._config = config
        self._observer = observer
        self._wall_clock = wall_clock
        # Operator state: boards and links out of service, drained machines, the audit log.
        self._board_status: dict[tuple[str, BoardXYZ], StoredBoardStatus] = {}
        self._link_status: dict[tuple[str, BoardXYZ, Link], LinkStatus] = {}
        self._draining: set[str] = set()
        self._audit: deque[a.AuditEntry] = deque(maxlen=a.MAX_AUDIT_ENTRIES)
        self._next_audit_id = 1
        self._store = store
        self._clock = clock
        self._machines: dict[str, Machine] = {mc.name: mc for mc in config.machines}
        self._allocators: dict[str, MachineAllocator] = {
            name: MachineAllocator(mc) for name, mc in self._machines.items()
        }
        self._scheduler = Scheduler(self._allocators, config.server.starvation_s)
        self._live: dict[int, Live] = {}
        # The live jobs in state QUEUED, by id: a scheduling pass reads them without
        # walking every live job, and is skipped when there are none.
        self._queue: dict[int, Live] = {}
        self._retired: OrderedDict[int, JobRecord] = OrderedDict()
        self._next_job_id = 1
        self._board_owner: dict[tuple[str, BoardXYZ], int] = {}
        # (free_at, machine, job_id): boards of destroyed jobs cooling down after power-off
        self._cooling: list[tuple[float, str, int]] = []
        self._listeners: list[Listener] = []
        self._power_listeners: list[PowerListener] = []
        self._pending_jobs: set[int] = set()
        self._pending_machines: set[str] = set()
        # Set when changes made outside a request wait for the committer task.
        self._has_background_changes = asyncio.Event()
        # job id -> store watermark of the job's latest staged change: a read about one
        # job waits only for that job's own changes to be durable.
        self._marks: dict[int, int] = {}
        self._forget_backlog: list[int] = []
        self._power: PowerModel | None = None
        # destroyed jobs whose boards are being powered off: job id -> machine name
        self._powering_off: dict[int, str] = {}
        self._handlers = self._command_handlers()

    def _command_handlers(self) -> dict[str, Handler]:
        """The commands served and their handlers; the facade fills it in."""
        return {}

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Restore the stored state, then run timers and board controllers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._committer(), name="committer")
            self._power = PowerModel(
                self._clock,
                power_on_delay_s=self._config.power.power_on_delay_s,
                power_off_delay_s=self._config.power.power_off_delay_s,
                on_job_idle=self._job_power_idle,
                on_transition=None if self._observer is None else self._observer.power_transition,
            )
            await self._restore(await self._store.load(audit_limit=a.MAX_AUDIT_ENTRIES))
            tg.create_task(self._power.run(), name="power")
            tg.create_task(self._timers(), name="timers")
            if on_started is not None:
                on_started()

    # --- restore ----------------------------------------------------------------------

    def _restore_operator_state(self, state: StoredState) -> None:
        for status in state.board_status:
            self._board_status[(status.machine, status.board)] = status
        for link_status in state.link_status:
            key = (link_status.machine, link_status.board, link_status.link)
            self._link_status[key] = link_status
        for name in self._machines:
            self._apply_out_of_service(name)
        for stored in state.audit:
            detail = dict(stored.detail)
            entry = a.AuditEntry(
                audit_id=stored.audit_id if stored.audit_id is not None else self._next_audit_id,
                timestamp_s=stored.at,
                operator=detail.get("operator"),
                peer=str(detail.get("peer", "")),
                action=stored.action,
                target=stored.target,
                reason=stored.reason or "",
            )
            self._audit.append(entry)
            self._next_audit_id = max(self._next_audit_id, entry.audit_id + 1)
        self._draining = {s.machine for s in state.machine_status if s.is_draining}

    async def _restore(self, state: StoredState) -> None:
        now = self._clock.now()
        self._restore_operator_state(state)
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
            job = Live(record, request, (), record.created_at, now)
            self._live[record.job_id] = job
            if record.is_allocated:
                assert record.machine_name is not None
                self._allocators[record.machine_name].restore(record.job_id, record.boards)
                for board in record.boards:
                    self._board_owner[(record.machine_name, board)] = record.job_id
                job.frames = self._power_frames(record)
                if record.state is JobState.POWER:
                    # The controller's work was lost with the old process: do it again.
                    self._start_power(job, bool(record.power))
            else:
                job.candidates = self._candidates(request) if request is not None else ()
                self._queue[record.job_id] = job
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

    def _put(self, job: Live, record: JobRecord) -> None:
        job.record = record
        self._store.stage(PutJob(record))
        self._marks[record.job_id] = self._store.mark

    async def _durable(self, job_id: int | None) -> None:
        """Wait until the latest change of one job is committed (at once if it is)."""
        if job_id is not None:
            await self._store.flush_to(self._marks.get(job_id, 0))

    def _retire(self, record: JobRecord, *, stage: bool = True) -> None:
        self._live.pop(record.job_id, None)
        self._queue.pop(record.job_id, None)
        self._retired[record.job_id] = record
        if stage:
            self._store.stage(PutJob(record))
            self._marks[record.job_id] = self._store.mark
        limit = self._config.server.max_retired_jobs
        while len(self._retired) > limit:
            old_id, _ = self._retired.popitem(last=False)
            self._marks.pop(old_id, None)
            self._forget_backlog.append(old_id)
        # Forgotten at once in memory (they answer "unknown"), but deleted from the
        # database in batches: a delete in every commit would cost a statement each time.
        # A restart trims what is left over again.
        if len(self._forget_backlog) >= _FORGET_BATCH:
            self._store.stage(ForgetJobs(tuple(self._forget_backlog)))
            self._forget_backlog.clear()

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
        queued = [
            QueuedJob(job_id, job.request, job.candidates, job.queued_at)
            for job_id, job in self._queue.items()
            if job.request is not None
        ]
        if not self._draining:
            return queued
        # A drained machine is no candidate for now; a job with no other one waits.
        result = []
        for job in queued:
            machines = tuple(c for c in job.machines if c not in self._draining)
            if machines:
                result.append(QueuedJob(job.job_id, job.request, machines, job.queued_at))
        return result

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

    def _allocated(self, job: Live, allocation: Allocation) -> None:
        record = jobs_.allocate(
            job.record,
            allocation.machine_name,
            allocation.boards,
            allocation.width_chips,
            allocation.height_chips,
        )
        self._store.stage(ClaimBoards(allocation.machine_name, record.boards, record.job_id))
        self._put(job, record)
        del self._queue[record.job_id]
        job.frames = self._power_frames(record)
        for board in record.boards:
            self._board_owner[(allocation.machine_name, board)] = record.job_id
        if self._observer is not None:
            self._observer.queue_wait(max(0.0, self._clock.now() - job.queued_at))
        self._start_power(job, True)

    # --- power ------------------------------------------------------------------------

    def _power_frames(self, record: JobRecord) -> PowerFrames:
        """An allocated job's boards by the board controller of their frame, in frame order."""
        assert record.machine_name is not None
        machine = self._machines[record.machine_name]
        frames: dict[FrameCF, list[BoardXYZ]] = {}
        for board in record.boards:
            frame = machine.frame_of(board)
            if frame is not None:
                frames.setdefault(frame, []).append(board)
        return tuple(
            (BmpKey(machine.name, frame.cabinet, frame.frame), tuple(boards))
            for frame, boards in sorted(frames.items())
        )

    def _start_power(self, job: Live, is_on: bool) -> None:
        assert self._power is not None
        for listener in self._power_listeners:
            listener(job.record.job_id, is_on)
        if job.frames:
            self._power.submit(
                [
                    PowerRequest(
                        job_id=job.record.job_id, bmp=bmp, boards=boards, is_power_on=is_on
                    )
                    for bmp, boards in job.frames
                ]
            )
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

    def _power_off_then_cool(self, job: Live) -> None:
        assert job.record.machine_name is not None
        self._powering_off[job.record.job_id] = job.record.machine_name
        self._start_power(job, False)

    def _cool(self, machine_name: str, job_id: int) -> None:
        heapq.heappush(
            self._cooling,
            (self._clock.now() + self._config.server.seconds_before_free, machine_name, job_id),
        )
        if self._config.server.seconds_before_free <= 0:
            self._release_cooled()

    def _background_commit(self, job_ids: Iterable[int], machines: Iterable[str]) -> None:
        """Commit and announce changes made outside a request (timers, board controllers).

        The committer takes the changes made in the same turn of the event loop (or while
        it was committing earlier ones) together; a request that commits first takes them
        with it, and the committer then finds nothing left to wait for.
        """
        self._pending_jobs.update(job_ids)
        self._pending_machines.update(machines)
        self._has_background_changes.set()

    async def _committer(self) -> None:
        """The one task that commits background changes: woken for them, not started."""
        while True:
            await self._has_background_changes.wait()
            await asyncio.sleep(0)  # gather everything changed in this turn of the loop
            self._has_background_changes.clear()
            jobs, self._pending_jobs = self._pending_jobs, set()
            machines, self._pending_machines = self._pending_machines, set()
            await self._commit(sorted(jobs), sorted(machines))

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
            if self._observer is not None:
                self._observer.keepalive_expired()
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

    def _end(self, job: Live, record: JobRecord, changed: list[int], machines: set[str]) -> None:
        """Retire a job that was live; power its boards off and let them cool down."""
        was_allocated = job.record.is_allocated
        self._retire(record)
        changed.append(record.job_id)
        if was_allocated and record.machine_name is not None:
            machines.add(record.machine_name)
            self._power_off_then_cool(job)

    # --- helpers for job commands -----------------------------------------------------

    def _touch(self, job: Live, conn: Any) -> None:
        job.last_touch = self._clock.now()
        host = getattr(conn, "peer_host", None)
        record = jobs_.touch(job.record, host)
        if record is not job.record:
            self._put(job, record)

    def _apply_out_of_service(self, machine_name: str) -> None:
        allocator = self._allocators.get(machine_name)
        if allocator is not None:
            allocator.set_out_of_service(
                board
                for (name, board), status in self._board_status.items()
                if name == machine_name and not status.in_service
            )
            allocator.set_out_of_service_links(
                (board, link)
                for (name, board, link), link_status in self._link_status.items()
                if name == machine_name and not link_status.in_service
            )

    def out_of_service_links(self, machine_name: str) -> list[tuple[BoardXYZ, Link]]:
        """The links of a machine an operator has taken out, as they were named."""
        return sorted(
            (board, link)
            for (name, board, link), status in self._link_status.items()
            if name == machine_name and not status.in_service
        )

    def out_of_service_boards(self, machine_name: str) -> list[BoardXYZ]:
        """The boards of a machine an operator has taken out."""
        return sorted(
            board
            for (name, board), status in self._board_status.items()
            if name == machine_name and not status.in_service
        )
