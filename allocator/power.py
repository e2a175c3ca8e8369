"""A model of the board controllers (BMPs): one per (machine, cabinet, frame).

A job's power-on or power-off becomes one `PowerRequest` per frame it touches. Requests on
one frame run strictly one after another, as on a real BMP; different frames work in
parallel. Each request takes the configured delay on the service's clock::

    frame (m, 0, 0):  [job 1 on: 5 s][job 2 on: 5 s][job 1 off: 1 s]
    frame (m, 0, 1):  [job 2 on: 5 s]
                      t=0           t=5            t=10          t=11
                                    job 1 ready    job 2 ready   job 1 idle

When a job has no request left in any frame, the model calls `on_job_idle(job_id)`; the
service then moves the job POWER -> READY, or frees the boards of a destroyed job. With zero
delays and idle frames a request completes inside `submit`, so the callback may run before
`submit` returns. Workers run inside `run()`, which the caller starts in its own task group.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from allocator.clock import Clock
from allocator.errors import RequestError
from machine_models.geometry import BoardXYZ, Link

__all__ = ["BmpKey", "PowerModel", "PowerRequest", "PowerStats"]


class BmpKey(NamedTuple):
    """Names one board controller: the frame of a cabinet of a machine."""

    machine: str
    cabinet: int
    frame: int


@dataclass(frozen=True, slots=True)
class PowerRequest:
    """One atomic piece of board controller work for one job on one frame.

    Attributes:
        job_id: the job the work is for.
        bmp: the controller that does it.
        boards: the boards of the job in that frame.
        is_power_on: True to power on (or reset), False to power off.
        disabled_links: the board links leaving the allocation, disabled after power-on.
    """

    job_id: int
    bmp: BmpKey
    boards: tuple[BoardXYZ, ...]
    is_power_on: bool
    disabled_links: tuple[tuple[BoardXYZ, Link], ...] = ()


@dataclass(slots=True)
class PowerStats:
    """Counters of the work done, for metrics.

    Attributes:
        n_requests: requests completed.
        n_boards_on: board power-on transitions completed.
        n_boards_off: board power-off transitions completed.
        n_links_disabled: link disables completed.
    """

    n_requests: int = 0
    n_boards_on: int = 0
    n_boards_off: int = 0
    n_links_disabled: int = 0


@dataclass(slots=True)
class _Frame:
    queue: deque[PowerRequest] = field(default_factory=deque)
    has_worker: bool = False


class PowerModel:
    """The board controllers of every machine, with a delay per request.

    Args:
        clock: the clock the delays run on.
        power_on_delay_s: how long one power-on request takes on a frame.
        power_off_delay_s: how long one power-off request takes on a frame.
        on_job_idle: called with a job id when the job has no work left on any frame; it
            must not raise and must not block.
        on_transition: called with ("on" | "off", n_boards) when a request completes.

    Raises:
        RequestError: a delay is negative.
    """

    def __init__(
        self,
        clock: Clock,
        power_on_delay_s: float,
        power_off_delay_s: float,
        on_job_idle: Callable[[int], None] | None = None,
        on_transition: Callable[[str, int], None] | None = None,
    ) -> None:
        for name, value in (
            ("power_on_delay_s", power_on_delay_s),
            ("power_off_delay_s", power_off_delay_s),
        ):
            if value < 0:
                raise RequestError(f"{name} must not be negative, got {value}")
        self._clock = clock
        self._on_delay_s = float(power_on_delay_s)
        self._off_delay_s = float(power_off_delay_s)
        self._on_job_idle = on_job_idle
        self._on_transition = on_transition
        self._frames: dict[BmpKey, _Frame] = {}
        self._pending: dict[int, int] = {}
        self._idle_waiters: dict[int, asyncio.Event] = {}
        self._powered: set[tuple[str, BoardXYZ]] = set()
        self._wakeup = asyncio.Event()
        self.stats = PowerStats()

    def submit(self, requests: Iterable[PowerRequest]) -> None:
        """Queue requests behind whatever their frames are doing.

        Never blocks. Requests that can complete at once (zero delay, idle frame) complete
        before this returns, and `on_job_idle` may be called from here.
        """
        batch = list(requests)
        for request in batch:
            self._pending[request.job_id] = self._pending.get(request.job_id, 0) + 1
        touched_jobs: list[int] = []
        for request in batch:
            frame = self._frames.get(request.bmp)
            if frame is None:
                frame = self._frames[request.bmp] = _Frame()
            if not frame.queue and not frame.has_worker and self._delay_s(request) == 0:
                self._complete(request, notify=False)
                touched_jobs.append(request.job_id)
            else:
                frame.queue.append(request)
                self._wakeup.set()
        for job_id in dict.fromkeys(touched_jobs):
            if job_id not in self._pending:
                self._job_idle(job_id)

    def pending_requests(self, job_id: int) -> int:
        """How many requests of a job are queued or in progress."""
        return self._pending.get(job_id, 0)

    def is_job_idle(self, job_id: int) -> bool:
        """Whether a job has no board controller work left."""
        return job_id not in self._pending

    def is_board_powered(self, machine: str, board: BoardXYZ) -> bool:
        """Whether the last completed request for a board powered it on."""
        return (machine, BoardXYZ(*board)) in self._powered

    def frame_backlog(self, bmp: BmpKey) -> int:
        """How many requests a frame has queued or in progress."""
        frame = self._frames.get(bmp)
        return len(frame.queue) if frame is not None else 0

    async def wait_job_idle(self, job_id: int) -> None:
        """Return once a job has no board controller work left (at once if it has none)."""
        if self.is_job_idle(job_id):
            return
        event = self._idle_waiters.setdefault(job_id, asyncio.Event())
        await event.wait()

    async def run(self) -> None:
        """Do the queued work until cancelled; start it in the caller's task group.

        One worker task per busy frame lives in a task group of its own, so cancelling
        `run` cancels every worker; a request interrupted that way stays at the head of its
        frame and runs again, in full, when `run` is started again.
        """
        async with asyncio.TaskGroup() as workers:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                for bmp, frame in self._frames.items():
                    if frame.queue and not frame.has_worker:
                        frame.has_worker = True
                        workers.create_task(self._work(bmp, frame), name=f"bmp {bmp}")

    async def _work(self, bmp: BmpKey, frame: _Frame) -> None:
        try:
            while frame.queue:
                request = frame.queue[0]
                delay_s = self._delay_s(request)
                if delay_s > 0:
                    await self._clock.sleep(delay_s)
                frame.queue.popleft()
                self._complete(request, notify=True)
        finally:
            frame.has_worker = False
            if frame.queue:
                self._wakeup.set()

    def _delay_s(self, request: PowerRequest) -> float:
        return self._on_delay_s if request.is_power_on else self._off_delay_s

    def _complete(self, request: PowerRequest, *, notify: bool) -> None:
        machine = request.bmp.machine
        kind = "on" if request.is_power_on else "off"
        if request.is_power_on:
            self._powered.update((machine, board) for board in request.boards)
            self.stats.n_boards_on += len(request.boards)
            self.stats.n_links_disabled += len(request.disabled_links)
        else:
            self._powered.difference_update((machine, board) for board in request.boards)
            self.stats.n_boards_off += len(request.boards)
        self.stats.n_requests += 1
        left = self._pending[request.job_id] - 1
        if left:
            self._pending[request.job_id] = left
        else:
            del self._pending[request.job_id]
        if self._on_transition is not None:
            self._on_transition(kind, len(request.boards))
        if notify and not left:
            self._job_idle(request.job_id)

    def _job_idle(self, job_id: int) -> None:
        event = self._idle_waiters.pop(job_id, None)
        if event is not None:
            event.set()
        if self._on_job_idle is not None:
            self._on_job_idle(job_id)

    def __repr__(self) -> str:
        busy = sum(1 for frame in self._frames.values() if frame.queue)
        return (
            f"PowerModel(on={self._on_delay_s}s, off={self._off_delay_s}s, "
            f"busy_frames={busy}, busy_jobs={len(self._pending)})"
        )
