"""Turns the service's committed changes into metrics and MQTT events.

Subscribed with `Service.add_listener`, so it runs after each commit, never inside a
request. The work per commit is proportional to what changed; the per-machine work (board
counts, board events, the retained summary) walks a machine's boards, so it is coalesced
and done at most once per `min_interval_s` whatever the request rate::

    commit --> on_change(jobs, machines) --+--> job events (at once, changed jobs only)
                                           |
                                           +--> dirty machines --(at most 1/min_interval_s)-->
                                                 board counts, job counts, queue length,
                                                 board events (diff), machine events, summary
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, Protocol

from allocator.jobs import JobRecord, JobState
from allocator.machine import Machine
from allocator.metrics import Metrics
from allocator.service import Service
from allocator.service.views import BoardView
from machine_models.geometry import BoardXYZ
from protocol.events import (
    BoardEvent,
    BoardState,
    JobEvent,
    MachineChange,
    MachineEvent,
    MachineSummary,
)

__all__ = ["DEFAULT_MIN_INTERVAL_S", "EventSink", "Reporter"]

DEFAULT_MIN_INTERVAL_S: Final = 0.5
"""The shortest time between two walks of a machine's boards."""


class EventSink(Protocol):
    """Where events go; `allocator.events.EventPublisher` is the real one."""

    def publish_job(self, event: JobEvent) -> None: ...
    def publish_board(self, event: BoardEvent) -> None: ...
    def publish_machine(self, event: MachineEvent) -> None: ...
    def publish_machine_summary(self, summary: MachineSummary) -> None: ...
    def forget_board(self, machine: str, x: int, y: int, z: int) -> None: ...
    def forget_machine(self, machine: str) -> None: ...


_JobView = tuple[JobState, bool | None, str | None]


class Reporter:
    """Keeps the metrics gauges and the MQTT topics in step with the service.

    Args:
        service: where the state is read from.
        metrics: the gauges to set; None for none.
        publisher: where events go; None when no broker is configured.
        min_interval_s: the shortest time between two walks of the machines' boards.
        wall_clock: Unix time for the events' `timestamp_s`.
    """

    def __init__(
        self,
        service: Service,
        *,
        metrics: Metrics | None = None,
        publisher: EventSink | None = None,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._publisher = publisher
        self._min_interval_s = min_interval_s
        self._wall_clock = wall_clock
        self._dirty_machines: set[str] = set()
        self._boards: dict[str, dict[BoardXYZ, BoardView]] = {}
        self._draining: dict[str, bool] = {}
        self._configs: dict[str, Machine] = {}
        """Each machine as last reported: a reload that changes it is announced."""
        self._is_started = False
        """Whether the first report (at start) is done: machines and drains found then are
        the state the server started in, not changes."""
        self._jobs: dict[int, _JobView] = {}
        self._last_flush = -float("inf")
        self._pending: asyncio.TimerHandle | asyncio.Handle | None = None
        self.n_flushes = 0

    def __repr__(self) -> str:
        return (
            f"<Reporter machines={sorted(self._boards)} dirty={sorted(self._dirty_machines)}"
            f" flushes={self.n_flushes}>"
        )

    def start(self) -> None:
        """Report every machine now (call once the service has restored its state)."""
        self._dirty_machines.update(self._service.machines)
        self.flush()
        self._is_started = True

    def close(self) -> None:
        """Cancel a pending report (at shutdown)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def on_change(self, job_ids: tuple[int, ...], machine_names: tuple[str, ...]) -> None:
        """The service's listener: jobs and machines changed in the last commit."""
        for job_id in job_ids:
            record = self._service.job_record(job_id)
            if record is None:
                continue
            if record.machine_name is not None:
                self._dirty_machines.add(record.machine_name)
            self._job_changed(record)
        self._dirty_machines.update(machine_names)
        self._schedule()

    def _job_changed(self, record: JobRecord) -> None:
        view: _JobView = (record.state, record.power, record.machine_name)
        if record.state is JobState.DESTROYED:
            self._jobs.pop(record.job_id, None)
        elif self._jobs.get(record.job_id) == view:
            return
        else:
            self._jobs[record.job_id] = view
        if self._publisher is not None:
            self._publisher.publish_job(
                JobEvent(
                    timestamp_s=self._wall_clock(),
                    job_id=record.job_id,
                    state=int(record.state),
                    state_name=record.state.name.lower(),
                    owner=record.owner,
                    machine=record.machine_name,
                    power=record.power,
                    n_boards=len(record.boards),
                    reason=record.reason,
                )
            )

    def _schedule(self) -> None:
        if self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        delay_s = self._last_flush + self._min_interval_s - time.monotonic()
        if delay_s <= 0:
            # After the other listeners of this commit (replies, notifications).
            self._pending = loop.call_soon(self._flush_pending)
        else:
            self._pending = loop.call_later(delay_s, self._flush_pending)

    def _flush_pending(self) -> None:
        self._pending = None
        self.flush()

    def flush(self) -> None:
        """Report the jobs and the dirty machines now."""
        self._last_flush = time.monotonic()
        self.n_flushes += 1
        job_counts = self._service.job_counts()
        queue_length = job_counts.get(JobState.QUEUED.name.lower(), 0)
        if self._metrics is not None:
            self._metrics.set_job_counts(job_counts)
            self._metrics.set_queue_length(queue_length)
        dirty, self._dirty_machines = self._dirty_machines, set()
        for name in sorted(dirty):
            self._report_machine(name, job_counts, queue_length)

    def _report_machine(self, name: str, job_counts: dict[str, int], queue_length: int) -> None:
        now = self._wall_clock()
        views = self._service.board_views(name)
        if views is None:
            gone = self._boards.pop(name, None)
            self._configs.pop(name, None)
            if gone is not None:
                self._draining.pop(name, None)
                if self._metrics is not None:
                    self._metrics.remove_machine(name)
                if self._publisher is not None:
                    self._publisher.publish_machine(
                        MachineEvent(timestamp_s=now, machine=name, change=MachineChange.REMOVED)
                    )
                    for slot in gone:
                        self._publisher.forget_board(name, slot.x, slot.y, slot.z)
                    self._publisher.forget_machine(name)
            return
        previous = self._boards.get(name)
        config = self._service.machines.get(name)
        known = self._configs.get(name)
        if config is not None:
            self._configs[name] = config
        if self._publisher is not None:
            if previous is None and self._is_started:
                self._publisher.publish_machine(
                    MachineEvent(timestamp_s=now, machine=name, change=MachineChange.ADDED)
                )
            elif (
                known is not None and config is not None and known is not config and known != config
            ):
                self._publisher.publish_machine(
                    MachineEvent(timestamp_s=now, machine=name, change=MachineChange.CHANGED)
                )
            for slot in () if previous is None else previous.keys() - views.keys():
                # no longer in the machine (a reload made it smaller): no retained state
                self._publisher.forget_board(name, slot.x, slot.y, slot.z)
        is_draining = self._service.is_draining(name)
        was_draining = self._draining.get(name)
        if was_draining is not None and was_draining != is_draining and self._publisher is not None:
            change = MachineChange.DRAINED if is_draining else MachineChange.UNDRAINED
            self._publisher.publish_machine(
                MachineEvent(
                    timestamp_s=now,
                    machine=name,
                    change=change,
                    reason=self._service.drain_reason(name),
                )
            )
        self._draining[name] = is_draining
        self._boards[name] = views
        counts = Counter(view[0] for view in views.values())
        if self._metrics is not None:
            self._metrics.set_board_counts(name, counts)
        if self._publisher is None:
            return
        for key, view in views.items():
            if previous is not None and previous.get(key) == view:
                continue
            board = self._service.board_status(name, key)
            self._publisher.publish_board(
                BoardEvent(
                    timestamp_s=now,
                    machine=name,
                    x=board.x,
                    y=board.y,
                    z=board.z,
                    cabinet=board.cabinet,
                    frame=board.frame,
                    board=board.board,
                    state=board.state,
                    job_id=board.job_id,
                    reason=board.reason,
                )
            )
        self._publisher.publish_machine_summary(
            MachineSummary(
                timestamp_s=now,
                machine=name,
                n_boards=len(views),
                n_boards_by_state={s: counts.get(s, 0) for s in BoardState},
                n_jobs=self._service.n_allocated_jobs(name),
                queue_length=queue_length,
                is_draining=is_draining,
            )
        )

    def board_counts(self, machine: str) -> dict[BoardState, int]:
        """The board counts of a machine as last reported (for tests and the log)."""
        return dict(Counter(view[0] for view in self._boards.get(machine, {}).values()))
