"""The executor's output pinned on small networks, and its behaviour over split runs, window
lengths and thread counts."""

from __future__ import annotations

import numba
import pytest

from machine_models import Executor, Image, Topology, executor, validate
from machine_models.errors import ExecutionError
from tests.machine_models.networks import digest, recurrent_network
from tests.machine_models.test_delays import delayed_image

BOARD = Topology.single_board()

# Digests of runs of recurrent_network() and delayed_image(): any change to the arithmetic, the
# generator, the order of deliveries or the counters changes them. Update only for a deliberate
# change of semantics, never for an optimisation. The windowed ones (shortest delay 6, and 8
# with delay extensions) were taken with the step-by-step executor before cores were allowed
# to run apart within a window: they prove the windows change nothing.
PINNED_FIRST_300 = "27e35e9179987acf4610708d7abf05e218138203cf3e900d6849c03d35e4ea7c"
PINNED_NEXT_200 = "b03db3b6166604c221eb664d93df4914707a041367a5b39fca0739a148ad641a"
PINNED_DELAY_6 = (
    "f69c339dad2ac4645e7dd8970f5c87661e847db06e93d177834fd183978986de",
    "c70e263b713d372c1f01f00a3835d6475199e6bd3ea03fb2700a9af28342f44b",
)
PINNED_DELAY_15 = "dc0dcd2c5cd20f2719c0eb5797aea5aa117462ae52d0b502ce7afcddc44b65e4"
PINNED_EXTENSIONS = (
    "df1e0c5ab128ef2270576b96efbf694b256f7f75f49b77ac2647efa687b2f688",
    "14b937b7f63a6318b3ecbe967fdf564274f1954ea7567a17db2fe94c943a5e45",
)


def extension_image() -> Image:
    """Delays through 1 to 3 delay-extension stages plus direct ones: window of 8 steps."""
    return delayed_image([24, 40, 56, 9, 12], [(2, 0), (5, 0), (6, 0), (30, 0)] + [(40, 0)] * 300)


def test_small_network_output_is_pinned() -> None:
    image = recurrent_network()
    validate(image, BOARD)
    ex = Executor(image, BOARD)
    first = ex.run(300)
    second = ex.run(200)
    assert digest(first) == PINNED_FIRST_300
    assert digest(second) == PINNED_NEXT_200
    assert first.core_provenance[(0, 0, 1)]["ring_buffer_saturations"] > 0


def test_windowed_runs_match_the_step_by_step_pins() -> None:
    ex = Executor(recurrent_network(seed=4, min_delay=6), BOARD)
    assert ex.window_steps == 6
    assert (digest(ex.run(170)), digest(ex.run(130))) == PINNED_DELAY_6
    ex = Executor(recurrent_network(seed=7, min_delay=15), BOARD)
    assert ex.window_steps == 15
    assert digest(ex.run(200)) == PINNED_DELAY_15


def test_delay_extensions_in_windows_match_the_step_by_step_pins() -> None:
    ex = Executor(extension_image(), BOARD)
    assert ex.window_steps == 8
    first = ex.run(57)
    assert first.core_provenance[(0, 0, 3)]["spikes_lost_to_saturation"] == 45
    assert (digest(first), digest(ex.run(60))) == PINNED_EXTENSIONS


@pytest.mark.parametrize("max_window_steps", [1, 4, 7])
def test_any_window_bound_gives_the_same_results(max_window_steps: int) -> None:
    ex = Executor(recurrent_network(seed=7, min_delay=15), BOARD, max_window_steps=max_window_steps)
    assert ex.window_steps == max_window_steps
    assert digest(ex.run(200)) == PINNED_DELAY_15


@pytest.mark.parametrize("groups_per_thread", [1, 3])
def test_thread_and_group_counts_do_not_change_results(
    monkeypatch: pytest.MonkeyPatch, groups_per_thread: int
) -> None:
    monkeypatch.setattr(executor, "GROUPS_PER_THREAD", groups_per_thread)
    monkeypatch.setattr(executor, "PARALLEL_MIN_WORK", 0)  # threads even on tiny networks
    before = numba.get_num_threads()
    try:
        most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
        for threads in sorted({1, min(2, most)}):
            numba.set_num_threads(threads)
            ex = Executor(recurrent_network(seed=4, min_delay=6), BOARD)
            assert (digest(ex.run(170)), digest(ex.run(130))) == PINNED_DELAY_6
            ex = Executor(extension_image(), BOARD)
            assert (digest(ex.run(57)), digest(ex.run(60))) == PINNED_EXTENSIONS
    finally:
        numba.set_num_threads(before)


def test_same_image_twice_gives_identical_results() -> None:
    image = recurrent_network(seed=5)
    a = Executor(image, BOARD).run(120)
    b = Executor(image, BOARD).run(120)
    assert digest(a) == digest(b)


def test_window_bound_below_one_is_refused() -> None:
    with pytest.raises(ExecutionError, match="max_window_steps must be at least 1, not 0"):
        Executor(recurrent_network(), BOARD, max_window_steps=0)
