"""The executor's output pinned on a small network, and its behaviour over split runs."""

from __future__ import annotations

from machine_models import Executor, Topology, validate
from tests.machine_models.networks import digest, recurrent_network

BOARD = Topology.single_board()

# Digests of a run of recurrent_network(): any change to the arithmetic, the generator, the
# order of deliveries or the counters changes them. Update only for a deliberate change of
# semantics, never for an optimisation.
PINNED_FIRST_300 = "27e35e9179987acf4610708d7abf05e218138203cf3e900d6849c03d35e4ea7c"
PINNED_NEXT_200 = "b03db3b6166604c221eb664d93df4914707a041367a5b39fca0739a148ad641a"


def test_small_network_output_is_pinned() -> None:
    image = recurrent_network()
    validate(image, BOARD)
    executor = Executor(image, BOARD)
    first = executor.run(300)
    second = executor.run(200)
    assert digest(first) == PINNED_FIRST_300
    assert digest(second) == PINNED_NEXT_200
    assert first.core_provenance[(0, 0, 1)]["ring_buffer_saturations"] > 0


def test_same_image_twice_gives_identical_results() -> None:
    image = recurrent_network(seed=5)
    a = Executor(image, BOARD).run(120)
    b = Executor(image, BOARD).run(120)
    assert digest(a) == digest(b)
