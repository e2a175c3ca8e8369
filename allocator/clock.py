"""Time for the service: a `Clock` protocol, the real clock and a fake clock for tests.

The service reads time and sleeps only through a `Clock`, so tests move keepalive and power
time by hand instead of sleeping. `FakeClock.advance(dt)` walks through the sleepers'
deadlines in order: time jumps to each deadline, its sleepers wake and run until they block
again, then time moves on. A task that sleeps again while being woken is therefore woken
again within the same `advance` if its new deadline is still within reach::

    await clock.advance(10)      # sleepers due at 5 and 10 wake, in that order; a task
                                 # that slept 5 s at t=5 wakes too (its deadline is 10)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

from allocator.errors import AllocatorError

__all__ = ["Clock", "ClockError", "FakeClock", "SystemClock"]

# How many event-loop turns `FakeClock` gives woken tasks when it cannot see the ready queue.
_SETTLE_ROUNDS = 64


class ClockError(AllocatorError):
    """A fake clock was asked to move backwards; tests only ever move time forwards."""

    def __init__(self, now: float, target: float) -> None:
        super().__init__(f"clock cannot move back from {now} to {target}")


@runtime_checkable
class Clock(Protocol):
    """Where the service gets the time and how it waits."""

    def now(self) -> float:
        """The current Unix time in seconds."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Return once the clock reads at least `t` (at once if it already does)."""
        ...

    async def sleep(self, dt: float) -> None:
        """Return once `dt` seconds have passed on this clock."""
        ...


class SystemClock:
    """The real clock: Unix time, sleeping on the running asyncio event loop."""

    def now(self) -> float:
        """The current Unix time in seconds."""
        return time.time()

    async def sleep_until(self, t: float) -> None:
        """Sleep until the Unix time `t`.

        The event loop sleeps on a monotonic clock, so a step of the wall clock during the
        sleep makes it return early or late by that step; callers re-read `now()`.
        """
        await asyncio.sleep(max(0.0, t - time.time()))

    async def sleep(self, dt: float) -> None:
        """Sleep for `dt` seconds (a negative `dt` only yields to the event loop)."""
        await asyncio.sleep(max(0.0, dt))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that moves only when a test says so.

    Sleepers wait on futures of the running event loop; `advance` and `set` wake them in
    deadline order (ties in the order they went to sleep) and let the woken tasks run before
    returning.

    Args:
        start: the Unix time the clock starts at.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The fake Unix time in seconds."""
        return self._now

    @property
    def n_sleepers(self) -> int:
        """How many tasks are asleep on this clock now."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline of a sleeping task, or None if nobody sleeps."""
        for when, _, future in sorted(self._sleepers):
            if not future.done():
                return when
        return None

    async def sleep_until(self, t: float) -> None:
        """Sleep until the fake clock reads at least `t`; returns at once if it does."""
        if t <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t, next(self._order), future))
        try:
            await future
        finally:
            # A cancelled sleeper leaves its entry behind; `_wake_due` skips done futures.
            future.cancel()

    async def sleep(self, dt: float) -> None:
        """Sleep for `dt` fake seconds."""
        await self.sleep_until(self._now + dt)

    async def advance(self, dt: float) -> None:
        """Move the clock forwards by `dt` seconds, waking every sleeper that falls due.

        Raises:
            ClockError: `dt` is negative.
        """
        await self.set(self._now + dt)

    async def set(self, t: float) -> None:
        """Move the clock forwards to `t`, waking every sleeper whose deadline is <= `t`.

        Pending tasks run first (so that a task just started reaches its sleep before time
        moves); then time steps from deadline to deadline, letting the woken tasks run at
        each step, and finally rests at `t`.

        Raises:
            ClockError: `t` is earlier than the current time.
        """
        if t < self._now:
            raise ClockError(self._now, t)
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= t:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._now = max(self._now, when)
            future.set_result(None)
            # Wake every other sleeper due at the same instant before letting them run.
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, same = heapq.heappop(self._sleepers)
                if not same.done():
                    same.set_result(None)
            await self.settle()
        self._now = t

    async def settle(self) -> None:
        """Let every runnable task run until all of them wait on something again.

        asyncio has no public "all tasks blocked" test; the default loop's ready queue is
        the best available sign, with a fixed number of turns as the fallback.
        """
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        for _ in range(_SETTLE_ROUNDS if ready is None else 10_000):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                # Two quiet turns in a row: callbacks scheduled by call_soon chains are done.
                await asyncio.sleep(0)
                if not ready:
                    return

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, n_sleepers={self.n_sleepers})"
