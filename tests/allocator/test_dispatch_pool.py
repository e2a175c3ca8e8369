"""The worker pool against a scripted worker process: what it does with each message."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest

from allocator.dispatch.pool import RunTicket, WorkerPool
from allocator.dispatch.topology import TopologySpec
from allocator.dispatch.worker import RunOrder
from protocol.dispatch import RunState

ONE_BOARD = TopologySpec(width_chips=8, height_chips=8, ethernet_chips=((0, 0),))

# A worker that writes the results of every run, then fails to save the state of a one-step
# run (as when its snapshot folder went or the disk filled) and saves that of any other.
_SCRIPTED_WORKER = textwrap.dedent(
    """
    import json, sys
    def send(kind, **kw):
        print(json.dumps({"kind": kind, **kw}), flush=True)
    send("ready")
    for line in sys.stdin:
        order = json.loads(line)
        send("started")
        send("done", steps_done=order["n_steps"])
        if order["n_steps"] == 1:
            send("failed", reason="No such file or directory: 'state.pickle.tmp'")
        else:
            send("saved", steps_done=order["n_steps"])
    """
)


class _Recorder:
    """The pool's events, as the command family would receive them."""

    def __init__(self) -> None:
        self.saved: dict[int, asyncio.Future[bool]] = {}

    def run_started(self, ticket: RunTicket, first_step: int) -> None:
        pass

    def run_progress(self, ticket: RunTicket, steps_done: int) -> None:
        pass

    def run_done(self, ticket: RunTicket, steps_done: int) -> None:
        pass

    def run_ended(self, ticket: RunTicket, state: RunState, reason: str) -> None:
        self.saved[ticket.run_id].set_exception(AssertionError(f"{state}: {reason}"))

    def state_saved(self, ticket: RunTicket, is_saved: bool) -> None:
        self.saved[ticket.run_id].set_result(is_saved)

    def queue_moved(self) -> None:
        pass

    def ticket(self, run_id: int, n_steps: int) -> RunTicket:
        self.saved[run_id] = asyncio.get_running_loop().create_future()
        order = RunOrder(
            run_id=run_id,
            job_id=7,
            folder="unused",
            topology=ONE_BOARD,
            n_steps=n_steps,
            is_fresh=True,
            previous_snapshot=None,
            snapshot=f"snap-{run_id}",
        )
        return RunTicket(order, self)


@pytest.mark.timeout(60)
async def test_a_state_that_fails_to_save_is_reported_and_the_worker_serves_the_next_run() -> None:
    pool = WorkerPool(
        1, memory_bytes=1 << 30, wall_s=60.0, command=[sys.executable, "-c", _SCRIPTED_WORKER]
    )
    events = _Recorder()
    async with asyncio.TaskGroup() as tg:
        pool.submit(events.ticket(1, n_steps=1))  # queued: the pool starts its worker for it
        running = tg.create_task(pool.run())
        assert await asyncio.wait_for(events.saved[1], 30) is False
        pool.submit(events.ticket(2, n_steps=5))
        assert await asyncio.wait_for(events.saved[2], 30) is True
        running.cancel()


class _Crashes:
    count = 0

    def worker_crashed(self) -> None:
        self.count += 1


@pytest.mark.timeout(60)
async def test_workers_stopped_with_the_server_are_no_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashes = _Crashes()
    pool = WorkerPool(
        2,
        memory_bytes=1 << 30,
        wall_s=60.0,
        observer=crashes,
        command=[sys.executable, "-c", _SCRIPTED_WORKER],
    )
    events = _Recorder()
    with caplog.at_level("INFO", logger="allotment.dispatch"):
        async with asyncio.TaskGroup() as tg:
            pool.submit(events.ticket(1, n_steps=5))
            running = tg.create_task(pool.run())
            assert await asyncio.wait_for(events.saved[1], 30) is True
            running.cancel()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    assert crashes.count == 0


async def test_a_state_hand_over_is_not_counted_as_a_run() -> None:
    pool = WorkerPool(1, memory_bytes=1 << 30, wall_s=60.0, command=[sys.executable, "-c", ""])
    events = _Recorder()
    run = events.ticket(1, n_steps=5)
    hand_over = events.ticket(2, n_steps=0)
    hand_over.order = hand_over.order.model_copy(update={"new_image": "upload-1.tmp"})
    for ticket in (hand_over, run):
        pool.submit(ticket)  # queued: the pool is not running, so no worker takes them
    assert (hand_over.is_run, run.is_run) == (False, True)
    assert pool.n_queued == 1
    assert pool.queue_position(run) == 1  # it waits behind the hand-over all the same
