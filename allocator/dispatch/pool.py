"""The worker pool: a fixed number of worker processes, a queue of runs, limits on each run.

Runs never execute in the server's process: each goes to a worker process
(`allocator.dispatch.worker`) that the pool keeps warm between runs. Runs wait in one queue,
oldest first; a job whose previous run's state is still being saved waits without holding
up the others::

    submit --> [queue] --pump--> idle worker --order--> "started" "progress"... "done" "saved"
                                     |
                 kill (stop, destroy, limits) --> process ends --> a new worker takes its place

A worker that ends during a run (killed by the pool, by the operating system, or crashed)
fails that run only; the pool starts another in its place. Memory (resident set, read from
``/proc``) and wall time are checked four times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from pydantic import ValidationError

from allocator.dispatch.topology import TopologySpec
from allocator.dispatch.worker import PreloadOrder, RunOrder, WorkerMessage
from protocol.dispatch import RunState

__all__ = ["PoolObserver", "RunEvents", "RunTicket", "WorkerPool"]

log = logging.getLogger("allotment.dispatch")

_CHECK_S: Final = 0.25
_EXIT_GRACE_S: Final = 2.0
"""How long a worker whose output closed may take to exit before it is killed."""
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RunEvents(Protocol):
    """What the pool reports about a run (the dispatch command family implements it)."""

    def run_started(self, ticket: RunTicket, first_step: int) -> None: ...
    def run_progress(self, ticket: RunTicket, steps_done: int) -> None: ...
    def run_done(self, ticket: RunTicket, steps_done: int) -> None: ...
    def run_ended(self, ticket: RunTicket, state: RunState, reason: str) -> None: ...
    def state_saved(self, ticket: RunTicket, is_saved: bool) -> None: ...
    def queue_moved(self) -> None: ...


class PoolObserver(Protocol):
    """What the pool counts (the dispatch metrics)."""

    def worker_crashed(self) -> None: ...


@dataclass(eq=False)
class RunTicket:
    """One run, from the queue to its end."""

    order: RunOrder
    events: RunEvents
    over: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the run has ended (done, failed or stopped)."""

    @property
    def job_id(self) -> int:
        return self.order.job_id

    @property
    def run_id(self) -> int:
        return self.order.run_id

    @property
    def is_run(self) -> bool:
        """Whether this is a run, not the state hand-over of a keep-state load."""
        return self.order.new_image is None

    @property
    def what(self) -> str:
        """The run, or the state hand-over of a keep-state load, in words (for messages)."""
        if not self.is_run:
            return f"the state hand-over of job {self.job_id} to its new image"
        return f"run {self.run_id} of job {self.job_id}"

    def __repr__(self) -> str:
        return f"<RunTicket {self.what}>"


@dataclass(eq=False)
class _Worker:
    process: asyncio.subprocess.Process
    is_ready: bool = False
    is_warmed: bool = False
    ticket: RunTicket | None = None
    saving: RunTicket | None = None
    started_at: float = 0.0
    kill_reason: tuple[RunState, str] | None = None
    is_killed: bool = field(default=False)
    preloaded: tuple[str, TopologySpec] | None = None
    """The image digest and network of the executor this worker built ahead of its run."""
    checking: asyncio.Future[WorkerMessage] | None = None
    """The verdict on the upload this worker validates now."""
    is_preloading: bool = False
    """A preload order is in hand (validating, then building its executor)."""

    @property
    def is_idle(self) -> bool:
        return self.is_ready and self.ticket is None and self.saving is None and not self.is_killed


class WorkerPool:
    """Worker processes and the queue of runs waiting for them.

    Args:
        n_workers: how many runs go at once.
        memory_bytes: a worker whose resident memory passes this fails its run.
        wall_s: a run that takes longer than this fails.
        nice: the workers' niceness (0 to 19): on a busy machine the scheduler lets the
            server's event loop in first, so that its replies do not wait behind a run.
        is_starting_with_server: start the workers as soon as the pool runs (they load the
            chip model's kernels while nothing waits for them); else at the first image.
        observer: counts worker crashes.
        command: the worker's command line (default: this Python, ``-m allocator.dispatch.worker``).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        n_workers: int,
        *,
        memory_bytes: int,
        wall_s: float,
        nice: int = 0,
        is_starting_with_server: bool = False,
        observer: PoolObserver | None = None,
        command: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._n_workers = n_workers
        self._memory_bytes = memory_bytes
        self._wall_s = wall_s
        self._observer = observer
        self._is_starting_with_server = is_starting_with_server
        self._command = (
            tuple(command)
            if command
            else (sys.executable, "-m", "allocator.dispatch.worker", "--nice", str(nice))
        )
        self._clock = clock
        self._queue: deque[RunTicket] = deque()
        self._workers: set[_Worker] = set()
        self._task_group: asyncio.TaskGroup | None = None
        self._is_started = False
        self._warmed = asyncio.Event()
        self.has_started: asyncio.Event = asyncio.Event()
        """Set once a worker has started and said it is ready (a sync point for tests)."""

    def __repr__(self) -> str:
        return (
            f"<WorkerPool workers={len(self._workers)}/{self._n_workers}"
            f" queued={len(self._queue)} running={self.n_running}>"
        )

    @property
    def n_queued(self) -> int:
        """Runs waiting for a worker (a keep-state load's hand-over is no run)."""
        return sum(1 for ticket in self._queue if ticket.is_run)

    @property
    def n_running(self) -> int:
        """Runs on a worker now (a keep-state load's hand-over is no run)."""
        return sum(1 for w in self._workers if w.ticket is not None and w.ticket.is_run)

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the workers (for operators and tests)."""
        return sorted(w.process.pid for w in self._workers)

    @property
    def n_warmed(self) -> int:
        """Workers that have loaded the chip model's kernels (see `allocator.dispatch.worker`)."""
        return sum(1 for w in self._workers if w.is_warmed)

    async def wait_warmed(self) -> None:
        """Wait until every worker has started and loaded its kernels (operators, tests)."""
        while self.n_warmed < self._n_workers:
            self._warmed.clear()
            await self._warmed.wait()

    def running_pid(self, ticket: RunTicket) -> int | None:
        """The process id of the worker running this run, if it is running."""
        return next((w.process.pid for w in self._workers if w.ticket is ticket), None)

    async def run(self) -> None:
        """Run the pool until cancelled; worker processes are killed on the way out."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._task_group = tg
                if self._queue or self._is_starting_with_server:
                    self._start_workers()
                try:
                    await asyncio.Future()  # until cancelled
                except asyncio.CancelledError:
                    # Stopping: no new workers, and the ends of these are no crashes.
                    self._task_group = None
                    for worker in self._workers:
                        if worker.ticket is not None and worker.kill_reason is None:
                            worker.kill_reason = (
                                RunState.FAILED,
                                f"the server stopped during run {worker.ticket.run_id}",
                            )
                    raise
        finally:
            self._task_group = None
            for worker in list(self._workers):
                self._answer_check(
                    worker, WorkerMessage(kind="unchecked", reason="the server is stopping")
                )
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    def prepare(self) -> None:
        """Start the worker processes now, if they are not (an image is coming)."""
        if self._task_group is not None:
            self._start_workers()

    def submit(self, ticket: RunTicket) -> None:
        """Queue a run; it starts as soon as a worker is free."""
        self._queue.append(ticket)
        self.prepare()
        self._pump()

    def preload(self, order: PreloadOrder) -> asyncio.Future[WorkerMessage] | None:
        """Have an idle worker validate an upload and build its executor ahead of its run.

        Returns:
            The worker's verdict (a `WorkerMessage` of kind ``valid``, ``invalid`` or
            ``unchecked``, the last also when the worker ends first), or None if no worker
            is free: the caller validates the upload itself.
        """
        # A worker still loading its kernels (a compile, on a fresh install) would keep the
        # verdict waiting: the caller's own check is quicker then.
        idle = [w for w in self._workers if w.is_idle and w.is_warmed and not w.is_preloading]
        if not idle:
            return None
        worker = min(idle, key=lambda w: w.preloaded is not None)
        for other in idle:
            if other is not worker and other.preloaded == (order.sha256, order.topology):
                other.preloaded = None  # a worker keeps one preload; only the newest counts
        worker.preloaded = (order.sha256, order.topology)
        worker.is_preloading = True
        worker.checking = asyncio.get_running_loop().create_future()
        stdin = worker.process.stdin
        assert stdin is not None
        stdin.write(order.model_dump_json().encode() + b"\n")
        return worker.checking

    def queue_position(self, ticket: RunTicket) -> int | None:
        """Runs ahead of this one (0: next); None unless it is queued."""
        try:
            return self._queue.index(ticket)
        except ValueError:
            return None

    def stop(self, ticket: RunTicket, state: RunState, reason: str) -> bool:
        """End a run now: out of the queue, or its worker killed. False if it was not going."""
        if ticket in self._queue:
            self._queue.remove(ticket)
            ticket.events.run_ended(ticket, state, reason)
            ticket.events.queue_moved()
            return True
        for worker in self._workers:
            if worker.ticket is ticket:
                self._kill(worker, state, reason)
                return True
        return False

    # --- workers ------------------------------------------------------------------------

    def _start_workers(self) -> None:
        if self._is_started or self._task_group is None:
            return
        self._is_started = True
        for index in range(self._n_workers):
            self._task_group.create_task(self._keep_worker(), name=f"dispatch-worker-{index}")
        self._task_group.create_task(self._watch_limits(), name="dispatch-limits")

    async def _keep_worker(self) -> None:
        """Keep one worker process going: start it, serve it, start another when it ends."""
        while True:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            except OSError as error:
                log.error("cannot start a dispatch worker: %s; retrying in 5 s", error)
                await asyncio.sleep(5.0)
                continue
            worker = _Worker(process)
            self._workers.add(worker)
            try:
                await self._serve(worker)
                worker.is_ready = False  # ending: no more orders for it
                # Its output closed: the worker is ending. Let it end by itself, so that its
                # own exit status is read: killing it first has `Popen` reap it, and asyncio
                # then reports the status as 255.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_EXIT_GRACE_S):
                        await process.wait()
            finally:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                code = await process.wait()
                self._workers.discard(worker)
                self._worker_ended(worker, code)

    async def _serve(self, worker: _Worker) -> None:
        stdout = worker.process.stdout
        assert stdout is not None
        while True:
            line = await stdout.readline()
            if not line:
                return
            try:
                message = WorkerMessage.model_validate_json(line)
            except ValidationError:
                # Something in the worker printed to its standard output: not ours, skip it.
                log.warning("dispatch worker %d wrote %r", worker.process.pid, line[:200])
                continue
            self._handle(worker, message)

    def _handle(self, worker: _Worker, message: WorkerMessage) -> None:
        ticket = worker.ticket
        if message.kind == "ready":
            worker.is_ready = True
            self.has_started.set()
            self._pump()
        elif message.kind == "warmed":
            worker.is_warmed = True
            self._warmed.set()
        elif message.kind == "started" and ticket is not None:
            ticket.events.run_started(ticket, message.first_step)
        elif message.kind == "progress" and ticket is not None:
            ticket.events.run_progress(ticket, message.steps_done)
        elif message.kind == "done" and ticket is not None:
            worker.ticket = None
            worker.saving = ticket
            ticket.events.run_done(ticket, message.steps_done)
        elif message.kind == "saved" and worker.saving is not None:
            saved, worker.saving = worker.saving, None
            saved.events.state_saved(saved, True)
            self._pump()
        elif message.kind == "failed" and ticket is not None:
            worker.ticket = None
            ticket.events.run_ended(ticket, RunState.FAILED, message.reason or "the run failed")
            self._pump()
        elif message.kind == "failed" and worker.saving is not None:
            # The results were written but the state was not (its folder went, the disk
            # filled): the worker is free again, and the state is not there to continue.
            unsaved, worker.saving = worker.saving, None
            unsaved.events.state_saved(unsaved, False)
            self._pump()
        elif message.kind in ("valid", "invalid", "unchecked"):
            if message.kind != "valid":
                worker.preloaded = None  # the worker keeps nothing of it
            self._answer_check(worker, message)
        elif message.kind == "preloaded":
            worker.is_preloading = False
            self._pump()

    def _answer_check(self, worker: _Worker, message: WorkerMessage) -> None:
        checking, worker.checking = worker.checking, None
        if checking is not None and not checking.done():
            checking.set_result(message)

    def _worker_ended(self, worker: _Worker, code: int) -> None:
        self._answer_check(
            worker,
            WorkerMessage(
                kind="unchecked",
                reason=f"the worker validating it ended ({_describe_exit(code)})",
            ),
        )
        ticket, worker.ticket = worker.ticket, None
        saving, worker.saving = worker.saving, None
        if ticket is not None:
            if worker.kill_reason is not None:
                state, reason = worker.kill_reason
            else:
                state, reason = (
                    RunState.FAILED,
                    f"the worker process running {ticket.what} ended ({_describe_exit(code)})",
                )
                if self._observer is not None:
                    self._observer.worker_crashed()
            ticket.events.run_ended(ticket, state, reason)
        elif worker.kill_reason is None and self._task_group is not None:
            log.warning("dispatch worker %d ended (%s)", worker.process.pid, _describe_exit(code))
            if self._observer is not None:
                self._observer.worker_crashed()
        if saving is not None:
            saving.events.state_saved(saving, False)
        self._pump()

    def _kill(self, worker: _Worker, state: RunState, reason: str) -> None:
        if worker.kill_reason is None:
            worker.kill_reason = (state, reason)
        worker.is_killed = True
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()

    def _pump(self) -> None:
        """Give queued runs to idle workers, oldest first."""
        idle = [w for w in self._workers if w.is_idle]
        if not idle or not self._queue:
            return
        saving = {w.saving.job_id for w in self._workers if w.saving is not None}
        moved = False
        for ticket in list(self._queue):
            if not idle:
                break
            if ticket.job_id in saving:
                continue
            key = (ticket.order.image_sha256, ticket.order.topology)
            # Its own preload first, else a worker that is not busy building another one.
            worker = next(
                (w for w in idle if w.preloaded == key),
                min(idle, key=lambda w: w.is_preloading),
            )
            idle.remove(worker)
            worker.preloaded = None  # a worker's next run uses its preload up, or drops it
            self._queue.remove(ticket)
            worker.ticket = ticket
            worker.started_at = self._clock()
            stdin = worker.process.stdin
            assert stdin is not None
            stdin.write(ticket.order.model_dump_json().encode() + b"\n")
            log.info("%s went to worker %d", ticket.what, worker.process.pid)
            moved = True
        if moved:
            for ticket in self._queue:
                ticket.events.queue_moved()
                break

    async def _watch_limits(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_S)
            now = self._clock()
            for worker in list(self._workers):
                ticket = worker.ticket
                if ticket is None or worker.is_killed:
                    continue
                where = ticket.what
                if now - worker.started_at > self._wall_s:
                    self._kill(
                        worker,
                        RunState.FAILED,
                        f"{where} passed the wall-time limit of {self._wall_s:g} s",
                    )
                    continue
                rss = _resident_bytes(worker.process.pid)
                if rss is not None and rss > self._memory_bytes:
                    self._kill(
                        worker,
                        RunState.FAILED,
                        f"{where} used {rss} bytes of memory, over the limit of"
                        f" {self._memory_bytes} bytes",
                    )


def _resident_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
