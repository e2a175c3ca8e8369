"""How many threads the executor runs a chunk of steps on: measured, never assumed.

The threads meet twice per window (after the emitting cores advance, after the packets are
delivered). On a quiet machine n threads beat one; on a busy one, a thread that loses its
core for a scheduler slice holds the others at every meeting, and n threads can be several
times slower than one. Which case holds changes while a run goes on (other runs start and
stop beside it), so the executor advances in chunks and this policy picks each chunk's
thread count and length from the time per step it has measured::

    chunk:    1    2    3    4    5 ... 20   21   22 ... 53   54 ...
    threads:  n    n    1    1    best       other best ...   other ...
    windows:  1    4    1    4    24         4    24          4
              warm-up and probes             probes of the loser, ever rarer while it loses

Probes are short, so that trying a thread count that has collapsed again costs little. When
the count in use falls behind the other's estimate through its own chunks (one slow chunk, a
burst of another process), that estimate is as old as its last probe: the count just left is
measured once more, a probe's length, before the other runs for long. The
results never depend on the choice (the kernels give the same bits on any number of
threads); only the wall time does. The first chunk of each count is not measured: it may
include starting the threads or loading compiled code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ThreadPolicy"]

FIRST_PROBE_INTERVAL = 16
"""Chunks between two probes of the losing thread count, at first."""
MAX_PROBE_INTERVAL = 64
"""Most chunks between two probes (the interval doubles while the loser keeps losing)."""
CLEAR_MARGIN = 1.25
"""A loser slower than the winner by this factor doubles the probe interval."""
WARM_UP_WINDOWS = 1
"""Windows of the first, unmeasured chunk of each thread count."""
PROBE_WINDOWS = 4
"""Windows of a chunk that measures a thread count (at first, and the loser's probes)."""
CHUNK_WINDOWS = 24
"""Windows of the other chunks."""


@dataclass
class ThreadPolicy:
    """Picks n threads or one for each chunk, from the measured seconds per step of each.

    Args:
        n_threads: The threads available (more than one, else there is nothing to choose).
    """

    n_threads: int
    _per_step: dict[int, float] = field(default_factory=dict)
    _seen: dict[int, int] = field(default_factory=dict)
    _best: int = 0
    _since_probe: int = 0
    _interval: int = FIRST_PROBE_INTERVAL
    _recheck: bool = False

    def next_chunk(self) -> tuple[int, int]:
        """The thread count and the length in windows of the next chunk."""
        for threads in (self.n_threads, 1):
            seen = self._seen.get(threads, 0)
            if seen < 2:  # a warm-up chunk and a measured one of each
                return threads, WARM_UP_WINDOWS if seen == 0 else PROBE_WINDOWS
        if self._recheck or self._since_probe >= self._interval:
            return (1 if self._best == self.n_threads else self.n_threads), PROBE_WINDOWS
        return self._best, CHUNK_WINDOWS

    def record(self, threads: int, n_steps: int, seconds: float) -> None:
        """Account for a chunk of ``n_steps`` run on ``threads`` threads in ``seconds``."""
        seen = self._seen.get(threads, 0)
        self._seen[threads] = seen + 1
        if seen == 0 or n_steps <= 0:
            return
        per_step = seconds / n_steps
        previous = self._per_step.get(threads)
        was_best = self._best
        # a probe replaces its count's old estimate (that is stale by then); the chunks of the
        # count in use average their last two, the latest counting most
        is_probe = bool(was_best) and threads != was_best
        self._per_step[threads] = (
            per_step if previous is None or is_probe else 0.5 * (previous + per_step)
        )
        if len(self._per_step) < 2:
            return
        self._best = min(self._per_step, key=self._per_step.__getitem__)
        if not was_best or threads == was_best:
            self._since_probe += 1
            # the count in use slowed below the other's estimate, which is as old as its last
            # probe: measure the count it leaves once more before running the other for long
            # (one slow chunk, another process's burst, must not cost a probe interval)
            self._recheck = bool(was_best) and self._best != was_best
            return
        if self._recheck:
            # that measurement: it settles the best, the probes keep their schedule
            self._recheck = False
            return
        # a probe of the loser
        self._since_probe = 0
        if self._best != was_best:
            self._interval = FIRST_PROBE_INTERVAL
            return
        loser = self._per_step[threads]
        if loser > CLEAR_MARGIN * self._per_step[self._best]:
            self._interval = min(2 * self._interval, MAX_PROBE_INTERVAL)

    @property
    def seconds_per_step(self) -> dict[int, float]:
        """The latest estimate of seconds per step of each thread count measured."""
        return dict(self._per_step)
