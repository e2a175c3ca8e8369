"""The executor's output pinned on small networks, and its behaviour over split runs, window
lengths and thread counts."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from machine_models import Executor, Image, Topology, executor, validate
from machine_models.errors import ExecutionError
from tests.machine_models.networks import digest, recurrent_network
from tests.machine_models.test_delays import delayed_image

BOARD = Topology.single_board()

# Digests of runs of recurrent_network() and delayed_image(): any change to the arithmetic, the
# generator, the order of deliveries or the counters changes them. Update only for a deliberate
# change of semantics, never for an optimisation. They were taken with a window of one step
# (cores exchange packets every step): the windowed runs equal them. Last retaken when the
# arithmetic became 7.4.1's (truncating multiplies, load-time constants the core's way, the
# KISS generator, delay extensions re-sending at every stage).
PINNED_FIRST_300 = "e058345832ea64e1e88e819673190ebe6a04ba873070214f0051b2b122900c4a"
PINNED_NEXT_200 = "c6e41da05207d2415a787f41e5eeee0e6cc27f28990cf722aa62dad23772d575"
PINNED_DELAY_6 = (
    "16ffc5ea31ccd01abe35ff3e8af8e3e236bdf57387cd6f27473ba61c20467e5a",
    "5e74c5b0789076c76a89bffd93013747b25dc0c4c2d22de4ec1215a3897c5418",
)
PINNED_DELAY_15 = "ea3ddc16813b92e7e08ede7ab038bbf044d886099755135d6c1da077f678c490"
PINNED_EXTENSIONS = (
    "039c5fe2a81964f3062daad0eaa92f7086f036d9ea00bce9218088b157c0569a",
    "b93c37c88e679ff206d256c1a641edc39e44dbafc59df9ddc2d144f8250ef82c",
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


def test_the_kernels_neuron_fields_are_the_regions() -> None:
    # the neuron state travels to the kernels field by field, under the regions' names
    from machine_models import kernels, neuron_apps

    for app in neuron_apps.NEURON_APPS.values():
        for record in (app.record, app.input_record):
            if record is not None:
                assert set(record.names or ()) <= set(kernels.NEURON_FIELDS)
    assert set(kernels.NEURON_STATE_FIELDS) <= set(kernels.NEURON_FIELDS)


def test_chunks_on_one_thread_walk_the_groups_of_a_one_thread_run() -> None:
    # more groups keep n threads busy but cost one thread a walk over each group's packets:
    # a chunk on one thread runs the grouping that a run on one thread alone would
    most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if most < 2:
        pytest.skip("needs two numba threads")
    image = recurrent_network(seed=4, min_delay=6)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        alone = Executor(image, BOARD)
        numba.set_num_threads(2)
        both = Executor(image, BOARD)
    finally:
        numba.set_num_threads(before)
    assert sorted(alone._layouts) == [1]
    assert sorted(both._layouts) == [1, 2]
    one, two = alone._layout(1), both._layout(1)
    for mine, theirs in zip(
        (one.a_ptr, one.a_items, *one.fanout), (two.a_ptr, two.a_items, *two.fanout), strict=True
    ):
        assert np.array_equal(mine, theirs)
    assert both._layout(2).a_ptr.size - 1 == 2 * (one.a_ptr.size - 1)
