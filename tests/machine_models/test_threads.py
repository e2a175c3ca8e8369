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


def test_one_slow_chunk_costs_one_probe_not_a_probe_interval() -> None:
    # one core busy: two threads 1.2 times slower than one; every tenth chunk another
    # process's burst makes one thread three times slower for that chunk
    chosen, ratio = simulate(400, lambda c, t: (3.0 if c % 10 == 5 else 1.0) if t == 1 else 1.2)
    # each burst is followed by one short measurement of one thread, not 16 chunks on two
    assert chosen[4:].count(2) <= 30
    assert ratio < 1.005
    # the probes of the loser keep their schedule through the bursts
    assert chosen[4:].count(2) >= 10


def test_a_slow_chunk_on_a_quiet_machine_keeps_the_threads() -> None:
    chosen, ratio = simulate(400, lambda c, t: (3.0 if c % 10 == 5 else 0.6) if t == 2 else 1.0)
    assert chosen[4:].count(2) > 380
    assert ratio < 0.9


def _wait_policy_in_child(env: dict[str, str]) -> str:
    """What a fresh process that imports the package and runs a parallel kernel has set."""
    import os
    import subprocess
    import sys

    script = (
        "import machine_models, os, numba\n"
        "import numpy as np\n"
        "loaded = 'libgomp' in open('/proc/self/maps').read()\n"
        "@numba.njit(parallel=True)\n"
        "def f(a):\n"
        "    for i in numba.prange(a.size):\n"
        "        a[i] += 1.0\n"
        "f(np.zeros(8))\n"
        "print(os.environ['OMP_WAIT_POLICY'], loaded)\n"
    )
    child_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_openmp_threads_sleep_at_barriers_unless_the_user_says_otherwise() -> None:
    policy, gomp_loaded_by_import = _wait_policy_in_child({}).split()
    assert policy == "PASSIVE"
    # libgomp reads the setting when it is loaded: that must come after the package's import
    assert gomp_loaded_by_import == "False"
    assert _wait_policy_in_child({"OMP_WAIT_POLICY": "ACTIVE"}).split()[0] == "ACTIVE"
