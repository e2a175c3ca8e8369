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

The operator commands (`protocol.admin`) are served here too: boards and links taken out of
service, machines drained, jobs destroyed with a reason; each one is recorded in the audit
log in the same transaction as its effect. A drained machine allocates nothing: queued jobs
that could only run there wait, running jobs keep their boards.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, OrderedDict, deque
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
    AppendAudit,
    ClaimBoards,
    ForgetJobs,
    LinkStatus,
    PutBoardStatus,
    PutJob,
    PutLinkStatus,
    ReleaseBoards,
    SetNextJobId,
    Store,
    StoredState,
)
from allocator.store import AuditEntry as StoredAudit
from allocator.store import BoardStatus as StoredBoardStatus
from machine_models.geometry import BoardCFB, BoardXYZ, ChipXY, Link
from protocol import admin as a
from protocol import messages as m
from protocol.commands import V1_VERSION, allotment_version_reply
from protocol.events import BoardState

__all__ = ["V1_VERSION", "AdminTargetError", "Service", "ServiceObserver"]

log = logging.getLogger("allotment.service")


Listener = Callable[[tuple[int, ...], tuple[str, ...]], None]

_DRAIN_ACTIONS = frozenset({"admin_drain_machine", "admin_undrain_machine"})


class ServiceObserver(Protocol):
    """What the service reports as it happens; `allocator.metrics.Metrics` implements it."""

    def queue_wait(self, seconds: float) -> None: ...
    def keepalive_expired(self) -> None: ...
    def power_transition(self, kind: str, n_boards: int = 1) -> None: ...
    def admin_action(self, action: str) -> None: ...


class AdminTargetError(AllocatorError):
    """An operator command named a machine, board or job that is not there; nothing changed.

    The operator should check the name (`allotment ps`, `allotment map`).
    """

    def __init__(self, target: str, problem: str = "does not exist") -> None:
        super().__init__(f"{target} {problem}")
        self.target = target


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
        self._live: dict[int, _Live] = {}
        self._retired: OrderedDict[int, JobRecord] = OrderedDict()
        self._next_job_id = 1
        self._board_owner: dict[tuple[str, BoardXYZ], int] = {}
        # (free_at, machine, job_id): boards of destroyed jobs cooling down after power-off
        self._cooling: list[tuple[float, str, int]] = []
        self._listeners: list[Listener] = []
        self._pending_jobs: set[int] = set()
        self._pending_machines: set[str] = set()
        self._is_committer_scheduled = False
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
                on_transition=None if self._observer is None else self._observer.power_transition,
            )
            await self._restore(await self._store.load(audit_limit=a.MAX_AUDIT_ENTRIES))
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
        for name in new:
            self._apply_out_of_service(name)
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
            machine = detail.get("machine")
            if stored.action in _DRAIN_ACTIONS and isinstance(machine, str):
                # The drained machines are the net effect of the drain actions logged.
                if stored.action == "admin_drain_machine":
                    self._draining.add(machine)
                else:
                    self._draining.discard(machine)

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
        queued = [
            QueuedJob(job.record.job_id, job.request, job.candidates, job.queued_at)
            for job in self._live.values()
            if job.record.state is JobState.QUEUED and job.request is not None
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
        if self._observer is not None:
            self._observer.queue_wait(max(0.0, self._clock.now() - job.queued_at))
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
        """Commit and announce changes made outside a request (timers, board controllers).

        Changes made in the same turn of the event loop share one committer task; a
        request that commits first takes them with it, and the committer then finds
        nothing left to wait for.
        """
        self._pending_jobs.update(job_ids)
        self._pending_machines.update(machines)
        if not self._is_committer_scheduled:
            assert self._task_group is not None
            self._is_committer_scheduled = True
            self._task_group.create_task(self._committer())

    async def _committer(self) -> None:
        await asyncio.sleep(0)  # gather everything changed in this turn of the loop
        self._is_committer_scheduled = False
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

    def _apply_out_of_service(self, machine_name: str) -> None:
        allocator = self._allocators.get(machine_name)
        if allocator is not None:
            allocator.set_out_of_service(
                board
                for (name, board), status in self._board_status.items()
                if name == machine_name and not status.in_service
            )

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
            args.operator or str(getattr(conn, "peer_host", "")),
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
        changed: list[int] = []
        machines = {machine.name}
        if args.in_service:
            machines |= self._schedule(changed)
        await self._commit(changed, machines)
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
            args.operator or str(getattr(conn, "peer_host", "")),
        )
        self._link_status[(machine.name, board, link)] = status
        self._store.stage(PutLinkStatus(status))
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
        await self._commit((), (machine.name,))
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
        entry = self._record(
            action,
            f"machine {machine.name}",
            args,
            conn,
            {"machine": machine.name},
        )
        changed: list[int] = []
        machines = {machine.name}
        if is_undrain:
            machines |= self._schedule(changed)
        await self._commit(changed, machines)
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

    # --- reading the state (map, metrics, events) ----------------------------------------

    def is_draining(self, machine_name: str) -> bool:
        """Whether an operator drained the machine (it allocates nothing new)."""
        return machine_name in self._draining

    def job_record(self, job_id: int) -> JobRecord | None:
        """The record of a live or remembered job, or None."""
        job = self._live.get(job_id)
        return job.record if job is not None else self._retired.get(job_id)

    def job_counts(self) -> dict[str, int]:
        """Live jobs by state name (`queued`, `power`, `ready`)."""
        counts = Counter(job.record.state.name.lower() for job in self._live.values())
        return dict(counts)

    def board_state(self, machine_name: str, board: BoardXYZ) -> tuple[BoardState, int | None]:
        """What one board is doing and the job (live or retired) that holds it."""
        machine = self._machines[machine_name]
        if not machine.is_live(board):
            return BoardState.DEAD, None
        holder = self._allocators[machine_name].holder(board)
        if holder is None:
            status = self._board_status.get((machine_name, board))
            if status is not None and not status.in_service:
                return BoardState.OUT_OF_SERVICE, None
            return BoardState.FREE, None
        job = self._live.get(holder)
        if job is not None:
            if job.record.state is JobState.READY:
                return BoardState.ALLOCATED, holder
            return BoardState.POWERING, holder
        if holder in self._powering_off:
            return BoardState.POWERING, holder
        return BoardState.COOLING_DOWN, holder

    def machine_state(self, machine_name: str) -> a.MachineState | None:
        """Every board of a machine with its state and job; None for an unknown machine.

        O(boards): for the map and the throttled reporting, never per request.
        """
        machine = self._machines.get(machine_name)
        if machine is None:
            return None
        dead_links = Counter(board for board, _ in machine.dead_links)
        for (name, board, _), link_status in self._link_status.items():
            if name == machine_name and not link_status.in_service:
                dead_links[board] += 1
        boards = []
        for x in range(machine.width_triads):
            for y in range(machine.height_triads):
                for z in range(3):
                    board = BoardXYZ(x, y, z)
                    state, job_id = self.board_state(machine_name, board)
                    cfb: BoardCFB | None = machine.physical(board)
                    status = self._board_status.get((machine_name, board))
                    boards.append(
                        a.BoardStatus.model_construct(
                            x=x,
                            y=y,
                            z=z,
                            cabinet=None if cfb is None else cfb.cabinet,
                            frame=None if cfb is None else cfb.frame,
                            board=None if cfb is None else cfb.board,
                            state=state,
                            job_id=job_id,
                            reason=None if status is None or status.in_service else status.reason,
                            n_dead_links=dead_links.get(board, 0),
                        )
                    )
        jobs = [
            a.JobOnMachine(
                job_id=job.record.job_id,
                owner=job.record.owner,
                n_boards=len(job.record.boards),
                state=int(job.record.state),
            )
            for job in self._live.values()
            if job.record.machine_name == machine_name and job.record.is_allocated
        ]
        return a.MachineState(
            name=machine.name,
            width=machine.width_triads,
            height=machine.height_triads,
            is_draining=machine.name in self._draining,
            boards=tuple(boards),
            jobs=tuple(sorted(jobs, key=lambda j: j.job_id)),
        )


def _same_hardware(first: Machine, second: Machine) -> bool:
    """Whether two descriptions of a machine have the same size, layout and addresses."""
    return (
        first.width_triads == second.width_triads
        and first.height_triads == second.height_triads
        and first.board_locations == second.board_locations
        and first.bmp_ips == second.bmp_ips
        and first.spinnaker_ips == second.spinnaker_ips
    )
