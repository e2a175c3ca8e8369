"""Tests of the system clock and of the fake clock that tests move by hand."""

from __future__ import annotations

import asyncio
import time

import pytest

from allocator.clock import Clock, ClockError, FakeClock, SystemClock
from allocator.errors import AllocatorError


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(0.0), Clock)


async def test_system_clock_reads_unix_time_and_past_sleeps_return() -> None:
    clock = SystemClock()
    before = time.time()
    assert before <= clock.now() <= time.time()
    # Deadlines in the past return without waiting for anything.
    await asyncio.wait_for(clock.sleep_until(clock.now() - 10), 5)
    await asyncio.wait_for(clock.sleep(-1), 5)


async def test_system_clock_sleep_really_waits() -> None:
    clock = SystemClock()
    target = clock.now() + 0.02
    await clock.sleep_until(target)
    assert clock.now() >= target


async def test_fake_clock_past_deadline_returns_at_once() -> None:
    clock = FakeClock(100.0)
    await clock.sleep_until(50.0)
    await clock.sleep(0)
    assert clock.now() == 100.0
    assert clock.n_sleepers == 0


async def test_fake_clock_wakes_in_deadline_order_at_their_times() -> None:
    clock = FakeClock(0.0)
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, dt: float) -> None:
        await clock.sleep(dt)
        woken.append((name, clock.now()))

    async with asyncio.TaskGroup() as tg:
        for name, dt in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("late", 10.0)]:
            tg.create_task(sleeper(name, dt))
        await clock.settle()
        assert clock.n_sleepers == 4
        assert clock.next_deadline == 1.0
        await clock.advance(2.5)
        assert woken == [("a", 1.0), ("b", 2.0)]
        assert clock.now() == 2.5
        await clock.set(10.0)
    assert woken == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("late", 10.0)]


async def test_fake_clock_chained_sleeps_within_one_advance() -> None:
    clock = FakeClock(0.0)
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep(5.0)
            ticks.append(clock.now())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        await clock.advance(10.0)
        assert ticks == [5.0, 10.0]
        await clock.advance(4.9)
        assert ticks == [5.0, 10.0]
        await clock.advance(0.1)
    assert ticks == [5.0, 10.0, 15.0]


async def test_fake_clock_advance_lets_new_tasks_reach_their_sleep_first() -> None:
    clock = FakeClock(0.0)
    done = asyncio.Event()

    async def sleeper() -> None:
        await clock.sleep(1.0)
        done.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(sleeper())
        # No settle here: advance itself lets the task start before moving time.
        await clock.advance(1.0)
        assert done.is_set()


async def test_fake_clock_cancelled_sleeper_is_forgotten() -> None:
    clock = FakeClock(0.0)
    task = asyncio.get_running_loop().create_task(clock.sleep(5.0))
    await clock.settle()
    assert clock.n_sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.n_sleepers == 0
    await clock.advance(10.0)
    assert clock.now() == 10.0


async def test_fake_clock_refuses_to_go_back() -> None:
    clock = FakeClock(50.0)
    with pytest.raises(ClockError, match=r"clock cannot move back from 50\.0 to 49\.0") as info:
        await clock.set(49.0)
    assert isinstance(info.value, AllocatorError)
    with pytest.raises(ClockError):
        await clock.advance(-1.0)
    assert clock.now() == 50.0


def test_reprs_show_state() -> None:
    assert repr(FakeClock(3.0)) == "FakeClock(now=3.0, n_sleepers=0)"
    assert repr(SystemClock()) == "SystemClock()"
