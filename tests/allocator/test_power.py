"""Tests of the board controller model on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from allocator.clock import FakeClock
from allocator.errors import RequestError
from allocator.power import BmpKey, PowerModel, PowerRequest
from machine_models.geometry import BoardXYZ, Link

T0 = 1_000.0
FRAME_A = BmpKey("m", 0, 0)
FRAME_B = BmpKey("m", 0, 1)
B0 = BoardXYZ(0, 0, 0)
B1 = BoardXYZ(0, 0, 1)
B2 = BoardXYZ(1, 0, 0)


@dataclass
class Harness:
    clock: FakeClock
    model: PowerModel
    idle: list[tuple[int, float]] = field(default_factory=list)
    transitions: list[tuple[str, int]] = field(default_factory=list)


def on(job_id: int, bmp: BmpKey, *boards: BoardXYZ) -> PowerRequest:
    return PowerRequest(job_id, bmp, boards, True, ((boards[0], Link.EAST),))


def off(job_id: int, bmp: BmpKey, *boards: BoardXYZ) -> PowerRequest:
    return PowerRequest(job_id, bmp, boards, False)


def make(on_s: float, off_s: float) -> Harness:
    clock = FakeClock(T0)
    idle: list[tuple[int, float]] = []
    transitions: list[tuple[str, int]] = []
    model = PowerModel(
        clock,
        on_s,
        off_s,
        on_job_idle=lambda job_id: idle.append((job_id, clock.now())),
        on_transition=lambda kind, n: transitions.append((kind, n)),
    )
    return Harness(clock, model, idle, transitions)


@pytest.fixture
async def slow() -> AsyncIterator[Harness]:
    harness = make(5.0, 1.0)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(harness.model.run())
        yield harness
        runner.cancel()


async def test_two_jobs_on_one_frame_become_ready_one_delay_apart(slow: Harness) -> None:
    slow.model.submit([on(1, FRAME_A, B0)])
    slow.model.submit([on(2, FRAME_A, B1)])
    assert slow.model.frame_backlog(FRAME_A) == 2
    await slow.clock.advance(4.9)
    assert slow.idle == []
    await slow.clock.advance(0.1)
    assert slow.idle == [(1, T0 + 5)]
    assert not slow.model.is_job_idle(2)
    await slow.clock.advance(5.0)
    assert slow.idle == [(1, T0 + 5), (2, T0 + 10)]
    assert slow.model.frame_backlog(FRAME_A) == 0


async def test_different_frames_work_in_parallel(slow: Harness) -> None:
    slow.model.submit([on(1, FRAME_A, B0)])
    slow.model.submit([on(2, FRAME_B, B2)])
    await slow.clock.advance(5.0)
    assert sorted(slow.idle) == [(1, T0 + 5), (2, T0 + 5)]


async def test_job_on_two_frames_is_idle_when_both_are_done(slow: Harness) -> None:
    slow.model.submit([on(9, FRAME_B, B2)])
    slow.model.submit([on(1, FRAME_A, B0), on(1, FRAME_B, B2)])
    assert slow.model.pending_requests(1) == 2
    await slow.clock.advance(5.0)
    assert slow.idle == [(9, T0 + 5)]
    assert slow.model.pending_requests(1) == 1
    await slow.clock.advance(5.0)
    assert slow.idle == [(9, T0 + 5), (1, T0 + 10)]


async def test_power_off_after_power_on_is_queued_behind_it(slow: Harness) -> None:
    slow.model.submit([on(1, FRAME_A, B0, B1)])
    await slow.clock.advance(2.0)
    slow.model.submit([off(1, FRAME_A, B0, B1)])
    await slow.clock.advance(3.0)
    # The power-on finished, but the job still has the power-off pending.
    assert slow.idle == []
    assert slow.model.is_board_powered("m", B0)
    await slow.clock.advance(1.0)
    assert slow.idle == [(1, T0 + 6)]
    assert not slow.model.is_board_powered("m", B0)
    assert slow.transitions == [("on", 2), ("off", 2)]
    assert slow.model.stats.n_requests == 2
    assert slow.model.stats.n_boards_on == 2
    assert slow.model.stats.n_boards_off == 2
    assert slow.model.stats.n_links_disabled == 1


async def test_wait_job_idle_returns_when_work_is_done(slow: Harness) -> None:
    await slow.model.wait_job_idle(5)  # no work: returns at once
    slow.model.submit([on(5, FRAME_A, B0)])
    async with asyncio.TaskGroup() as tg:
        waiter = tg.create_task(slow.model.wait_job_idle(5))
        await slow.clock.advance(4.0)
        assert not waiter.done()
        await slow.clock.advance(1.0)
        assert waiter.done()


async def test_zero_delays_complete_inside_submit_without_run() -> None:
    harness = make(0.0, 0.0)
    harness.model.submit([on(3, FRAME_A, B0), on(3, FRAME_B, B2)])
    assert harness.idle == [(3, T0)]
    assert harness.model.is_job_idle(3)
    assert harness.clock.n_sleepers == 0
    harness.model.submit([off(3, FRAME_A, B0)])
    assert harness.idle == [(3, T0), (3, T0)]


async def test_zero_delay_request_still_waits_behind_a_busy_frame() -> None:
    harness = make(5.0, 0.0)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(harness.model.run())
        harness.model.submit([on(1, FRAME_A, B0)])
        harness.model.submit([off(1, FRAME_A, B0)])
        assert harness.idle == []
        await harness.clock.advance(5.0)
        assert harness.idle == [(1, T0 + 5)]
        runner.cancel()


async def test_cancelled_run_keeps_interrupted_request_for_next_run() -> None:
    harness = make(5.0, 1.0)
    harness.model.submit([on(1, FRAME_A, B0)])
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(harness.model.run())
        await harness.clock.advance(3.0)
        runner.cancel()
    assert harness.idle == []
    assert harness.model.frame_backlog(FRAME_A) == 1
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(harness.model.run())
        await harness.clock.advance(4.9)
        assert harness.idle == []
        await harness.clock.advance(0.1)
        assert harness.idle == [(1, T0 + 8)]
        runner.cancel()


def test_negative_delay_is_refused() -> None:
    with pytest.raises(RequestError, match="power_off_delay_s must not be negative, got -1"):
        PowerModel(FakeClock(0), 1.0, -1.0)


def test_repr_shows_state() -> None:
    model = make(5.0, 1.0).model
    model.submit([on(1, FRAME_A, B0)])
    assert repr(model) == "PowerModel(on=5.0s, off=1.0s, busy_frames=1, busy_jobs=1)"
