"""The one owner of the service's mutable state, changed only through its own methods.

Jobs, the queue, board occupancy, power, operator state (boards and links out of service,
drained machines, the audit log) and the timers live here; the command families (v1,
operator, views, reload, dispatch) are separate objects that call the public methods of
`ServiceState` and never touch its attributes.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from allocator import jobs as jobs_
from allocator.clock import Clock
from allocator.config import ServerConfig
from allocator.errors import AllocatorError, StoreError
from allocator.jobs import JobRecord, JobState
from allocator.locate import (
    JobPlace,
)
from allocator.machine import FrameCF, Machine
from allocator.packing import Allocation, MachineAllocator
from allocator.power import BmpKey, PowerModel, PowerRequest
from allocator.requests import JobRequest
from allocator.scheduler import QueuedJob, Scheduler
from allocator.store import (
    AppendAudit,
    ClaimBoards,
    ForgetJobs,
    LinkStatus,
    MachineStatus,
    PutBoardStatus,
    PutJob,
    PutLinkStatus,
    PutMachineStatus,
    ReleaseBoards,
    SetNextJobId,
    Store,
    StoredState,
)
from allocator.store import AuditEntry as StoredAudit
from allocator.store import BoardStatus as StoredBoardStatus
from machine_models.geometry import BoardXYZ, Link
from protocol import admin as a

__all__ = ["AdminTargetError", "JobListener", "Listener", "ServiceObserver", "ServiceState"]

log = logging.getLogger("allotment.service")
job_log = logging.getLogger("allotment.jobs")
"""Job activity at INFO, one line each: created, allocated, powered, destroyed, expired."""

_FORGET_BATCH = 64
"""Retired jobs past the limit are deleted from the database this many at a time."""


Listener = Callable[[tuple[int, ...], tuple[str, ...]], None]
"""Called with (job ids, machine names) after each commit that changed them."""
PowerFrames = tuple[tuple[BmpKey, tuple[BoardXYZ, ...]], ...]
"""An allocation's boards grouped by the board controller (BMP) of their frame."""


_MAX_CACHED_FRAMES = 4096
"""Board sets whose grouping by frame `ServiceState` remembers (then it starts afresh)."""


def _retire_order(record: JobRecord) -> tuple[float, int]:
    """When a retired job was destroyed (ties: by id), the order retirement evicts in."""
    return (record.destroyed_at or 0.0, record.job_id)


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


@dataclass(slots=True)
class _AfterCommit:
    """A reply that waits for a commit: the committer settles it (`_reply_after_commit`)."""

    future: asyncio.Future[Any]
    value: Any
    then: Callable[[], Any] | None
    job_ids: tuple[int, ...]
    machine_names: tuple[str, ...]

    def settle(self) -> None:
        if self.future.done():  # cancelled: the connection or the server went away
            return
        if self.then is None:
            self.future.set_result(self.value)
            return
        try:
            self.future.set_result(self.then())
        except Exception as error:  # the server's error boundary answers it
            self.future.set_exception(error)

    def fail(self, error: BaseException) -> None:
        if self.future.done():
            return
        if isinstance(error, Exception):
            self.future.set_exception(error)
        else:  # cancelled: nobody answers it
            self.future.cancel()


class AdminTargetError(AllocatorError):
    """An operator command named a machine, board or job that is not there; nothing changed.

    The operator should check the name (`allotment ps`, `allotment map`).
    """

    def __init__(self, target: str, problem: str = "does not exist") -> None:
        super().__init__(f"{target} {problem}")
        self.target = target


class JobListener(Protocol):
    """Told of what happens to jobs' boards, as the change is made (before its commit).

    For a family that keeps something per job (dispatch: images loaded, runs going): a
    job destroyed, or its boards switched off or on (which resets them), loses it.
    Exceptions are logged and do not stop the change.
    """

    def job_destroyed(self, record: JobRecord) -> None: ...
    def boards_powered(self, job_id: int, is_on: bool) -> None: ...


class ServiceState:
    """The mutable state of the service and the job lifecycle, behind methods.

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
        self._drain_reasons: dict[str, str | None] = {}
        """Why each drained machine was drained (the operator's reason)."""
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
        # (free_at, machine, job_id): boards of destroyed jobs cooling down after power-off
        self._cooling: list[tuple[float, str, int]] = []
        self._listeners: list[Listener] = []
        self._job_listeners: list[JobListener] = []
        self._pending_jobs: set[int] = set()
        self._pending_machines: set[str] = set()
        # Set when changes made outside a request wait for the committer task.
        self._has_background_changes = asyncio.Event()
        self._is_committing = False  # the committer task is in a commit
        # Replies the committer gives once the changes staged before them are durable.
        self._after_commit: list[_AfterCommit] = []
        # While a request makes its changes (synchronously), what it changed: changes it
        # sets off (boards powered at once, freed at once) are committed with it.
        self._request_changes: tuple[list[int], set[str]] | None = None
        # Committed changes not yet announced: one announcement per commit, however many
        # requests it held.
        self._unannounced_jobs: dict[int, None] = {}
        self._unannounced_machines: dict[str, None] = {}
        self._is_announce_scheduled = False
        # job id -> store watermark of the job's latest staged change: a read about one
        # job waits only for that job's own changes to be durable.
        self._marks: dict[int, int] = {}
        self._service_mark = 0
        """The store's mark after the latest board or link service change staged."""
        self._forget_backlog: list[int] = []
        self._power: PowerModel | None = None
        # destroyed jobs whose boards are being powered off: job id -> machine name
        self._powering_off: dict[int, str] = {}
        self._frames_of: dict[tuple[str, tuple[BoardXYZ, ...]], PowerFrames] = {}

    def __repr__(self) -> str:
        return (
            f"<ServiceState machines={list(self._machines)} live={len(self._live)}"
            f" queued={len(self._queue)} retired={len(self._retired)}"
            f" next_job_id={self._next_job_id}>"
        )

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Restore the stored state, then run timers and board controllers until cancelled.

        Raises:
            StoreError: the store gave up on the database (`DatabaseUnavailableError`) or
                could not load the state. The state in memory may then be ahead of the
                database: the service stops, and a restart resumes from the durable state.
        """
        try:
            await self._run(on_started)
        except* StoreError as group:
            raise group.exceptions[0] from None

    async def _run(self, on_started: Callable[[], None] | None) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_store(), name="store watch")
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

    async def _watch_store(self) -> None:
        """Stop the service when the store gives up, whoever's commit found it out."""
        raise await self._store.wait_broken()

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
        self._drain_reasons = {s.machine: s.reason for s in state.machine_status if s.is_draining}

    async def _restore(self, state: StoredState) -> None:
        now = self._clock.now()
        self._restore_operator_state(state)
        self._next_job_id = max(state.next_job_id, 1)
        changed_jobs: list[int] = []
        # Retired jobs in the order they were destroyed, as they were retired in memory:
        # the ones kept are the last `max_retired_jobs` destroyed, whatever their ids.
        for record in sorted(state.retired_jobs, key=_retire_order):
            self._next_job_id = max(self._next_job_id, record.job_id + 1)
            self._retire(record, stage=False)
        for record in sorted(state.live_jobs, key=lambda r: r.job_id):
            self._next_job_id = max(self._next_job_id, record.job_id + 1)
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
            # The arguments as sent: a fourth one is max_dead_boards, in kwargs already.
            return JobRequest.from_args(record.args[:3], **dict(record.kwargs))
        except AllocatorError:
            return None

    # --- commits and announcements ----------------------------------------------------

    async def _commit(self, job_ids: Iterable[int], machine_names: Iterable[str]) -> None:
        await self._store.flush()
        self._announce_soon(job_ids, machine_names)

    def _announce_soon(self, job_ids: Iterable[int], machine_names: Iterable[str]) -> None:
        """Announce committed changes after the replies of their commit.

        The requests answered by one commit all wake in the same turn of the event loop,
        before the one callback this schedules: the commit is announced once, with every
        job and machine it changed, after its replies and before any later request.
        """
        self._unannounced_jobs.update(dict.fromkeys(job_ids))
        self._unannounced_machines.update(dict.fromkeys(machine_names))
        if self._is_announce_scheduled or not (
            self._unannounced_jobs or self._unannounced_machines
        ):
            return
        self._is_announce_scheduled = True
        asyncio.get_running_loop().call_soon(self._announce_committed)

    def _announce_committed(self) -> None:
        self._is_announce_scheduled = False
        jobs = tuple(self._unannounced_jobs)
        machines = tuple(self._unannounced_machines)
        self._unannounced_jobs.clear()
        self._unannounced_machines.clear()
        self._announce(jobs, machines)

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
        was_live = self._live.pop(record.job_id, None) is not None
        self._queue.pop(record.job_id, None)
        self._retired[record.job_id] = record
        if stage:
            job_log.info("job %d destroyed: %s", record.job_id, record.reason or "no reason given")
            self._store.stage(PutJob(record))
            self._marks[record.job_id] = self._store.mark
        if was_live:
            self._tell_job_listeners("job_destroyed", record)
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
            elif not request.tags <= machine.tags:
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
        waited_s = max(0.0, self._clock.now() - job.queued_at)
        if self._observer is not None:
            self._observer.queue_wait(waited_s)
        if job_log.isEnabledFor(logging.INFO):
            first = record.boards[0]
            job_log.info(
                "job %d allocated %d board%s on %s from (%d, %d, %d) after %.1f s queued",
                record.job_id,
                len(record.boards),
                "" if len(record.boards) == 1 else "s",
                allocation.machine_name,
                first.x,
                first.y,
                first.z,
                waited_s,
            )
        self._start_power(job, True)

    # --- power ------------------------------------------------------------------------

    def _power_frames(self, record: JobRecord) -> PowerFrames:
        """An allocated job's boards by the board controller of their frame, in frame order.

        Remembered by boards: the same regions are allocated over and over.
        """
        assert record.machine_name is not None
        key = (record.machine_name, record.boards)
        frames = self._frames_of.get(key)
        if frames is None:
            if len(self._frames_of) >= _MAX_CACHED_FRAMES:
                self._frames_of.clear()
            frames = self._frames_of[key] = self._group_by_frame(record)
        return frames

    def _group_by_frame(self, record: JobRecord) -> PowerFrames:
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
            if self._config.server.seconds_before_free > 0:
                # powering -> cooling down: the listeners (metrics, events) see the change
                self._background_commit((), (machine_name,))
            return
        job = self._live.get(job_id)
        if job is None or job.record.state is not JobState.POWER:
            return
        self._put(job, jobs_.power_done(job.record))
        job_log.info("job %d powered %s", job_id, "on" if job.record.power else "off")
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
        with it, and the committer then finds nothing left to wait for. Changes that a
        request sets off as it makes its own (zero power delays, no cool-down) are simply
        part of that request's commit.
        """
        if self._request_changes is not None:
            changed, changed_machines = self._request_changes
            changed.extend(job_ids)
            changed_machines.update(machines)
            return
        self._pending_jobs.update(job_ids)
        self._pending_machines.update(machines)
        self._has_background_changes.set()

    async def _committer(self) -> None:
        """The one task that commits background changes and answers requests after commits.

        Woken for them, not started: a request answered after a commit (`_reply_after_commit`)
        costs a future, not a task of its own.
        """
        while True:
            await self._has_background_changes.wait()
            await asyncio.sleep(0)  # gather everything changed in this turn of the loop
            self._has_background_changes.clear()
            jobs, self._pending_jobs = self._pending_jobs, set()
            machines, self._pending_machines = self._pending_machines, set()
            waiting, self._after_commit = self._after_commit, []
            self._is_committing = True
            try:
                await self._store.flush()
            except BaseException as error:
                # Those that came during the commit too: the service stops now.
                waiting.extend(self._after_commit)
                self._after_commit.clear()
                for after in waiting:
                    after.fail(error)
                raise
            finally:
                self._is_committing = False
            announced_jobs: dict[int, None] = dict.fromkeys(sorted(jobs))
            announced_machines: dict[str, None] = dict.fromkeys(sorted(machines))
            for after in waiting:
                announced_jobs.update(dict.fromkeys(after.job_ids))
                announced_machines.update(dict.fromkeys(after.machine_names))
                after.settle()
            self._announce_soon(announced_jobs, announced_machines)

    def _reply_after_commit(
        self,
        value: Any,
        job_ids: Iterable[int] = (),
        machine_names: Iterable[str] = (),
        *,
        then: Callable[[], Any] | None = None,
    ) -> asyncio.Future[Any]:
        """A future of a request's reply, given once everything staged so far is durable.

        The committer commits (together with whatever else is staged) and then resolves
        it with `value`, or with what `then()` returns at that point, and announces the
        jobs and machines; a failed commit fails it with the store's error.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._after_commit.append(
            _AfterCommit(future, value, then, tuple(job_ids), tuple(machine_names))
        )
        self._has_background_changes.set()
        return future

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
            job_log.info(
                "job %d expired: no keepalive for %g s", job.record.job_id, job.record.keepalive_s
            )
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

    # --- listeners --------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(job_ids, machine_names)`` after each commit that changed them."""
        self._listeners.append(listener)

    def add_job_listener(self, listener: JobListener) -> None:
        """Tell ``listener`` of jobs destroyed and boards switched (see `JobListener`)."""
        self._job_listeners.append(listener)

    def _tell_job_listeners(self, event: str, *args: Any) -> None:
        for listener in self._job_listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:
                log.exception("a job listener failed on %s", event)

    # --- reading: jobs ------------------------------------------------------------------

    def job_record(self, job_id: int | None) -> JobRecord | None:
        """The record of a live or remembered (retired) job, or None."""
        if job_id is None:
            return None
        job = self._live.get(job_id)
        return job.record if job is not None else self._retired.get(job_id)

    def live_job(self, job_id: int | None) -> JobRecord | None:
        """The record of a live job (queued, powering or ready), or None."""
        job = self._live.get(job_id) if job_id is not None else None
        return job.record if job is not None else None

    def job_owner(self, job_id: int | None) -> str | None:
        """Who created a live or remembered job, or None."""
        record = self.job_record(job_id)
        return record.owner if record is not None else None

    def job_place(self, job_id: int | None) -> JobPlace | None:
        """Where a live allocated job's boards are (machine, boards, chip size), or None."""
        job = self._live.get(job_id) if job_id is not None else None
        if job is None or not job.record.is_allocated:
            return None
        return job.place()

    def live_jobs(self) -> list[JobRecord]:
        """Every live job's record, oldest first."""
        return [job.record for job in self._live.values()]

    def job_on_board(self, machine_name: str, board: BoardXYZ) -> JobPlace | None:
        """The live allocated job holding a board, or None (a board cooling down: None)."""
        allocator = self._allocators.get(machine_name)
        return self.job_place(allocator.holder(board)) if allocator is not None else None

    def job_counts(self) -> dict[str, int]:
        """Live jobs by state name (`queued`, `power`, `ready`)."""
        counts: dict[str, int] = {}
        for job in self._live.values():
            name = job.record.state.name.lower()
            counts[name] = counts.get(name, 0) + 1
        return counts

    # --- reading: machines and boards -----------------------------------------------------

    @property
    def machines(self) -> dict[str, Machine]:
        """The configured machines by name, in priority order (a copy)."""
        return dict(self._machines)

    def machine(self, name: str) -> Machine | None:
        return self._machines.get(name)

    def drain_reason(self, machine_name: str) -> str | None:
        """Why the machine was last drained or undrained (None: not known)."""
        return self._drain_reasons.get(machine_name)

    def is_draining(self, machine_name: str) -> bool:
        """Whether an operator drained the machine (it allocates nothing new)."""
        return machine_name in self._draining

    def board_holders(self, machine_name: str) -> Mapping[BoardXYZ, int]:
        """Every held board of a machine and the job (live or cooling down) holding it.

        A live view of the one record of board ownership: do not keep it across changes.
        """
        return self._allocators[machine_name].holders

    def is_job_ready(self, job_id: int) -> bool | None:
        """For a job holding boards: True if live and ready, False if live and powering,
        None if retired (its boards power off or cool down)."""
        job = self._live.get(job_id)
        return None if job is None else job.record.state is JobState.READY

    def is_powering_off(self, job_id: int) -> bool:
        """Whether a retired job's boards are still being powered off."""
        return job_id in self._powering_off

    def board_service(self, machine_name: str) -> dict[BoardXYZ, StoredBoardStatus]:
        """The operator's status of each board of a machine whose status was ever set."""
        return {
            board: status
            for (name, board), status in self._board_status.items()
            if name == machine_name
        }

    def link_service(self, machine_name: str) -> dict[tuple[BoardXYZ, Link], LinkStatus]:
        """The operator's status of each link of a machine whose status was ever set."""
        return {
            (board, link): status
            for (name, board, link), status in self._link_status.items()
            if name == machine_name
        }

    # --- v1 changes ---------------------------------------------------------------------

    async def create_job(
        self,
        request: JobRequest,
        *,
        owner: str,
        keepalive_s: float | None,
        args: tuple[int, ...],
        kwargs: Mapping[str, Any],
        host: str | None,
    ) -> int:
        """Queue (or allocate at once) a job; a request that can never fit is destroyed.

        Returns the job id once the job is durable.
        """
        changed: list[int] = []
        machines: set[str] = set()
        job_id = self._create(request, owner, keepalive_s, args, kwargs, host, changed, machines)
        await self._commit(changed, machines)
        return job_id

    def create_job_nowait(
        self,
        request: JobRequest,
        *,
        owner: str,
        keepalive_s: float | None,
        args: tuple[int, ...],
        kwargs: Mapping[str, Any],
        host: str | None,
    ) -> asyncio.Future[int]:
        """`create_job` for a request's handler: a future of the job id, once durable.

        The change is made at once; the committer resolves the future after its commit,
        with no task per request.
        """
        changed: list[int] = []
        machines: set[str] = set()
        job_id = self._create(request, owner, keepalive_s, args, kwargs, host, changed, machines)
        return self._reply_after_commit(job_id, changed, machines)

    def _create(
        self,
        request: JobRequest,
        owner: str,
        keepalive_s: float | None,
        args: tuple[int, ...],
        kwargs: Mapping[str, Any],
        host: str | None,
        changed: list[int],
        machines: set[str],
    ) -> int:
        self._request_changes = (changed, machines)
        try:
            return self._create_job(
                request, owner, keepalive_s, args, kwargs, host, changed, machines
            )
        finally:
            self._request_changes = None

    def _create_job(
        self,
        request: JobRequest,
        owner: str,
        keepalive_s: float | None,
        args: tuple[int, ...],
        kwargs: Mapping[str, Any],
        host: str | None,
        changed: list[int],
        machines: set[str],
    ) -> int:
        now = self._clock.now()
        job_id = self._next_job_id
        self._next_job_id += 1
        self._store.stage(SetNextJobId(self._next_job_id))
        record = JobRecord(
            job_id=job_id,
            owner=owner,
            created_at=now,
            keepalive_s=keepalive_s,
            args=args,
            kwargs=kwargs,
            keepalivehost=host,
        )
        candidates = self._candidates(request)
        if job_log.isEnabledFor(logging.INFO):
            job_log.info(
                "job %d created by %s from %s: %s",
                job_id,
                owner,
                host or "?",
                request.description,
            )
        changed.append(job_id)
        if not candidates:
            self._retire(jobs_.cancel(record, now, jobs_.REASON_NO_SUITABLE_MACHINES))
        else:
            job = Live(record, request, candidates, now, now)
            self._live[job_id] = job
            self._queue[job_id] = job
            self._put(job, record)
            machines |= self._schedule(changed)
        return job_id

    def touch(self, job_id: int | None, host: str | None) -> JobRecord | None:
        """A client showed a live job is wanted: reset its keepalive; return its record."""
        job = self._live.get(job_id) if job_id is not None else None
        if job is None:
            return None
        job.last_touch = self._clock.now()
        record = jobs_.touch(job.record, host)
        if record is not job.record:
            self._put(job, record)
        return job.record

    def is_durable(self, job_id: int | None) -> bool:
        """Whether every change of the job is committed (a read may answer at once)."""
        return job_id is None or self._store.is_durable(self._marks.get(job_id, 0))

    async def durable(self, job_id: int | None) -> None:
        """Wait until the latest change of one job is committed (at once if it is)."""
        if job_id is not None:
            await self._store.flush_to(self._marks.get(job_id, 0))

    async def flush(self) -> None:
        """Wait until every change made so far is committed."""
        await self._store.flush()

    async def set_power(self, job_id: int | None, is_on: bool, host: str | None) -> None:
        """Switch a live allocated job's boards on (which resets them) or off."""
        changed: list[int] = []
        machines: set[str] = set()
        self._set_power(job_id, is_on, host, changed, machines)
        await self._commit(changed, machines)

    def set_power_nowait(
        self, job_id: int | None, is_on: bool, host: str | None
    ) -> asyncio.Future[None]:
        """`set_power` for a request's handler: a future resolved once the change is durable."""
        changed: list[int] = []
        machines: set[str] = set()
        self._set_power(job_id, is_on, host, changed, machines)
        return self._reply_after_commit(None, changed, machines)

    def _set_power(
        self,
        job_id: int | None,
        is_on: bool,
        host: str | None,
        changed: list[int],
        machines: set[str],
    ) -> None:
        job = self._live.get(job_id) if job_id is not None else None
        if job is None:
            return
        self.touch(job_id, host)
        if not job.record.is_allocated:
            return
        self._request_changes = (changed, machines)
        try:
            self._put(job, jobs_.set_power(job.record, is_on))
            self._start_power(job, is_on)
            changed.append(job.record.job_id)
            self._tell_job_listeners("boards_powered", job.record.job_id, is_on)
        finally:
            self._request_changes = None

    def after_commit(self, then: Callable[[], Any]) -> asyncio.Future[Any]:
        """A future of ``then()``, called once every change staged so far is durable.

        For a read that must not show what is not committed yet, with no task of its own.
        """
        return self._reply_after_commit(None, then=then)

    def when_service_durable(self, then: Callable[[], Any]) -> Any:
        """``then()`` now if every board and link service change is durable, else a future
        of it: a read of what is out of service never shows what a commit may still lose."""
        if self._store.is_durable(self._service_mark):
            return then()
        return self._reply_after_commit(None, then=then)

    def when_durable(self, job_id: int | None, then: Callable[[], Any]) -> Any:
        """``then()`` now if every change of the job is durable, else a future of it."""
        if self.is_durable(job_id):
            return then()
        return self._reply_after_commit(None, then=then)

    async def destroy(
        self, job_id: int | None, reason: str | None, *, reschedule: bool = False
    ) -> bool:
        """Destroy a live job (no-op for an unknown or destroyed one); True if it was live.

        Its boards come free only once powered off and cooled down (which schedules);
        `reschedule` runs a scheduling pass at once too (a reservation may have gone).
        """
        changed: list[int] = []
        machines: set[str] = set()
        was_live = self._destroy(job_id, reason, reschedule, changed, machines)
        await self._commit(changed, machines)
        return was_live

    def destroy_nowait(self, job_id: int | None, reason: str | None) -> asyncio.Future[None]:
        """`destroy` for a request's handler: a future resolved once the change is durable."""
        changed: list[int] = []
        machines: set[str] = set()
        self._destroy(job_id, reason, False, changed, machines)
        return self._reply_after_commit(None, changed, machines)

    def _destroy(
        self,
        job_id: int | None,
        reason: str | None,
        reschedule: bool,
        changed: list[int],
        machines: set[str],
    ) -> bool:
        job = self._live.get(job_id) if job_id is not None else None
        if job is None:
            return False
        self._request_changes = (changed, machines)
        try:
            self._end(job, jobs_.destroy(job.record, self._clock.now(), reason), changed, machines)
            if reschedule:
                machines |= self._schedule(changed)
        finally:
            self._request_changes = None
        return True

    # --- operator changes ---------------------------------------------------------------

    def require_machine(self, name: str) -> Machine:
        """The machine of that name.

        Raises:
            AdminTargetError: there is none.
        """
        machine = self._machines.get(name)
        if machine is None:
            raise AdminTargetError(f"machine {name!r}")
        return machine

    def require_board(self, machine: Machine, x: int, y: int, z: int) -> BoardXYZ:
        """A board of the machine.

        Raises:
            AdminTargetError: the machine has no such board.
        """
        board = BoardXYZ(x, y, z)
        if not machine.is_inside(board):
            raise AdminTargetError(f"board ({x}, {y}, {z}) of machine {machine.name!r}")
        return board

    def record_audit(
        self,
        *,
        action: str,
        target: str,
        operator: str | None,
        peer: str,
        reason: str,
        detail: Mapping[str, Any],
    ) -> a.AuditEntry:
        """Stage an audit entry for an operator action (committed with its effect)."""
        entry = a.AuditEntry(
            audit_id=self._next_audit_id,
            timestamp_s=self._wall_clock(),
            operator=operator,
            peer=peer,
            action=action,
            target=target,
            reason=reason,
        )
        self._next_audit_id += 1
        self._audit.append(entry)
        self._store.stage(
            AppendAudit(
                StoredAudit(
                    at=entry.timestamp_s,
                    who=operator or peer,
                    action=action,
                    target=target,
                    reason=reason,
                    detail={"operator": operator, "peer": peer, **detail},
                    audit_id=entry.audit_id,
                )
            )
        )
        if self._observer is not None:
            self._observer.admin_action(action)
        log.info("operator %s from %s: %s %s: %s", operator, peer, action, target, reason)
        return entry

    def audit_entries(self, limit: int) -> list[a.AuditEntry]:
        """The newest audit entries, newest first."""
        newest = list(self._audit)[-limit:]
        newest.reverse()
        return newest

    def set_board_service(
        self, machine: Machine, board: BoardXYZ, in_service: bool, reason: str, by: str
    ) -> None:
        """Take a board out of service or put it back (commit with `commit_machine`)."""
        status = StoredBoardStatus(machine.name, board, in_service, reason, self._wall_clock(), by)
        self._board_status[(machine.name, board)] = status
        self._store.stage(PutBoardStatus(status))
        self._service_mark = self._store.mark
        self._apply_out_of_service(machine.name)

    def set_link_service(
        self, machine: Machine, board: BoardXYZ, link: Link, in_service: bool, reason: str, by: str
    ) -> None:
        """Take a board link out of service or put it back (commit with `commit_machine`)."""
        status = LinkStatus(machine.name, board, link, in_service, reason, self._wall_clock(), by)
        self._link_status[(machine.name, board, link)] = status
        self._store.stage(PutLinkStatus(status))
        self._service_mark = self._store.mark
        self._apply_out_of_service(machine.name)

    def set_draining(self, machine: Machine, is_draining: bool, reason: str, by: str) -> None:
        """Drain a machine (it allocates nothing new) or undrain it."""
        if is_draining:
            self._draining.add(machine.name)
        else:
            self._draining.discard(machine.name)
        self._drain_reasons[machine.name] = reason
        self._store.stage(
            PutMachineStatus(
                MachineStatus(machine.name, is_draining, reason, self._wall_clock(), by)
            )
        )

    async def commit_machine(self, machine_name: str, *, may_allocate: bool) -> None:
        """Commit a change to a machine; one that frees capacity may allocate queued jobs."""
        changed: list[int] = []
        machines = {machine_name}
        if may_allocate:
            machines |= self._schedule(changed)
        await self._commit(changed, machines)

    # --- reconfiguration ------------------------------------------------------------------

    def remove_machine(self, name: str, changed: list[int]) -> None:
        """Forget a machine's jobs and boards (removed, or its hardware changed).

        Its allocated jobs are destroyed with "Machine removed."; boards powering off or
        cooling down are released at once.
        """
        now = self._clock.now()
        for job in [j for j in self._live.values() if j.record.machine_name == name]:
            record = jobs_.cancel(job.record, now, jobs_.REASON_MACHINE_REMOVED)
            self._end(job, record, changed, set())
        for job_id, machine_name in list(self._powering_off.items()):
            if machine_name == name:
                del self._powering_off[job_id]
        self._cooling = [c for c in self._cooling if c[1] != name]
        heapq.heapify(self._cooling)
        machine = self._machines.get(name)
        if machine is not None:
            self._store.stage(ReleaseBoards(name, tuple(sorted(machine.live_boards))))

    def allocators_for(
        self, config: ServerConfig, kept: Iterable[str]
    ) -> dict[str, MachineAllocator]:
        """The allocators of a new configuration, the machines named in `kept` holding
        their jobs' allocations as now; nothing of the service changes.

        Raises:
            AllocationConflictError: an allocation does not fit its machine's new
                description (a board it holds is now dead), naming the board and job.
        """
        kept = set(kept)
        allocators: dict[str, MachineAllocator] = {}
        for machine in config.machines:
            allocator = MachineAllocator(machine)
            if machine.name in kept:
                previous = self._allocators[machine.name]
                for job_id in self._holders(machine.name):
                    held = previous.allocation(job_id)
                    if held is not None:
                        # a board of a split triad is restored as one (others may share
                        # the triad), never as the 1 x 1 rectangle that holds it all
                        rectangle = None if held.is_single_board else held.rectangle
                        allocator.restore(job_id, held.boards, rectangle)
            allocators[machine.name] = allocator
        return allocators

    def install_config(self, config: ServerConfig, allocators: dict[str, MachineAllocator]) -> None:
        """Use a new configuration and its allocators (from `allocators_for`)."""
        self._config = config
        self._machines = {mc.name: mc for mc in config.machines}
        self._frames_of.clear()  # a machine's frames may have moved
        self._allocators = allocators
        for name in self._machines:
            self._apply_out_of_service(name)
        self._scheduler = Scheduler(self._allocators, config.server.starvation_s)

    def requeue(self, changed: list[int]) -> set[str]:
        """Match every queued job against the machines again; allocate what fits now.

        A job that can no longer fit anywhere is cancelled as it would be at creation.
        Returns the machines that changed.
        """
        now = self._clock.now()
        for job in list(self._queue.values()):
            if job.request is not None:
                job.candidates = self._candidates(job.request)
                if not job.candidates:
                    record = jobs_.cancel(job.record, now, jobs_.REASON_NO_SUITABLE_MACHINES)
                    self._end(job, record, changed, set())
        return self._schedule(changed)

    def commit_in_background(self, job_ids: Iterable[int], machines: Iterable[str]) -> None:
        """Commit and announce changes made outside a request (see `_background_commit`)."""
        self._background_commit(job_ids, machines)

    def _holders(self, machine_name: str) -> list[int]:
        """Every job holding boards of a machine: allocated, powering off or cooling down."""
        live = [
            j.record.job_id for j in self._live.values() if j.record.machine_name == machine_name
        ]
        off = [job_id for job_id, name in self._powering_off.items() if name == machine_name]
        cooling = [job_id for _, name, job_id in self._cooling if name == machine_name]
        return live + off + cooling

    # --- test sync point ----------------------------------------------------------------

    async def settled(self) -> None:
        """Return once nothing is left to commit: background changes and staged ones.

        The explicit sync point for tests (after moving a `FakeClock`), instead of sleeping.
        """
        while self._has_background_changes.is_set() or self._is_committing or self._store.n_pending:
            await self._store.flush()
            await asyncio.sleep(0)  # the committer takes its turn
        await asyncio.sleep(0)  # the announcement of the last commit (call_soon) runs
