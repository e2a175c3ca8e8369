"""The thread policy: picks the faster of n threads and one from what it measures, keeps probing."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from machine_models.threads import MAX_PROBE_INTERVAL, ThreadPolicy

STEPS_PER_WINDOW = 10


def simulate(n_chunks: int, per_step: Callable[[int, int], float]) -> tuple[list[int], float]:
    """Run chunks on a policy for 2 threads; ``per_step(chunk, threads)`` gives seconds per step.

    Returns:
        The thread count of every chunk, and the time taken over what one thread would take.
    """
    policy = ThreadPolicy(2)
    chosen: list[int] = []
    seconds = one_thread = 0.0
    for chunk in range(n_chunks):
        threads, windows = policy.next_chunk()
        chosen.append(threads)
        steps = STEPS_PER_WINDOW * windows
        seconds += steps * per_step(chunk, threads)
        one_thread += steps * per_step(chunk, 1)
        policy.record(threads, steps, steps * per_step(chunk, threads))
    return chosen, seconds / one_thread


def test_quiet_machine_runs_on_every_thread() -> None:
    chosen, ratio = simulate(400, lambda _, t: 1.0 if t == 1 else 0.6)
    assert chosen[:4] == [2, 2, 1, 1]  # a warm-up and a measured chunk of each
    assert chosen[4:].count(1) <= 8  # probes of one thread, ever rarer
    assert ratio < 0.62


def test_busy_machine_falls_back_to_one_thread() -> None:
    # a thread that loses its core makes the parallel chunks four times slower
    chosen, ratio = simulate(400, lambda _, t: 1.0 if t == 1 else 4.0)
    assert chosen[4:].count(2) <= 8
    # warm-up and probes included, hardly slower than one thread throughout
    assert ratio < 1.03


def test_probe_interval_grows_to_its_bound_while_the_loser_keeps_losing() -> None:
    chosen, _ = simulate(1000, lambda _, t: 1.0 if t == 1 else 4.0)
    probes = [i for i, t in enumerate(chosen) if t == 2 and i >= 4]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps == sorted(gaps)
    assert max(gaps) == MAX_PROBE_INTERVAL + 1


def test_a_load_that_arrives_midway_is_noticed() -> None:
    # quiet for 200 chunks, then another process takes a core
    chosen, _ = simulate(400, lambda c, t: (0.6 if c < 200 else 4.0) if t == 2 else 1.0)
    assert chosen[150:200].count(2) > 45
    assert chosen[300:].count(1) > 95


def test_a_load_that_leaves_is_noticed() -> None:
    chosen, _ = simulate(600, lambda c, t: (4.0 if c < 100 else 0.6) if t == 2 else 1.0)
    assert chosen[300:].count(2) > 290
