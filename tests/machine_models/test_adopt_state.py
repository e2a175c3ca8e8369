"""Executor.adopt_state: a run continued on a fresh executor equals one unbroken run."""

from __future__ import annotations

import dataclasses

import pytest

from machine_models import Executor, Topology
from machine_models.errors import ExecutionError
from tests.machine_models.networks import digest, recurrent_network
from tests.machine_models.test_delays import delayed_image

BOARD = Topology.single_board()


@pytest.mark.parametrize(
    "image",
    [
        recurrent_network(),
        delayed_image([24, 40, 56, 9, 12], [(2, 0), (5, 0), (6, 0), (30, 0)] + [(40, 0)] * 30),
    ],
    ids=["recurrent", "delay-extensions"],
)
def test_a_run_handed_over_midway_ends_as_the_unbroken_run(image: object) -> None:
    whole = Executor(image, BOARD)  # type: ignore[arg-type]
    whole.run(37)
    expected = digest(whole.run(263))
    first = Executor(image, BOARD)  # type: ignore[arg-type]
    first.run(37)
    second = Executor(image, BOARD)  # type: ignore[arg-type]
    second.adopt_state(first)
    assert second.step == 37
    assert digest(second.run(263)) == expected


def test_a_different_layout_cannot_be_adopted() -> None:
    small = Executor(recurrent_network(n_per_core=50), BOARD)
    small.run(5)
    big = Executor(recurrent_network(n_per_core=100), BOARD)
    with pytest.raises(
        ExecutionError, match=r"core \(0, 0, 1\) holds other neurons \(base and count \[0, 50\]"
    ):
        big.adopt_state(small)


def test_neurons_moved_between_cores_cannot_be_adopted_though_the_totals_agree() -> None:
    from toolchain import IFCurrExp, Network, map_network, virtual_allocation

    def two_cores(first: int, second: int) -> Executor:
        net = Network(dt_ms=1.0, seed=3)
        net.population(first, IFCurrExp(), "a")
        net.population(second, IFCurrExp(), "b")
        mapped = map_network(net, virtual_allocation(1))
        return Executor(mapped.image, mapped.topology)

    running = two_cores(10, 12)
    running.run(5)
    swapped = two_cores(12, 10)  # 22 neurons on the same two cores, 12 + 10 now
    with pytest.raises(
        ExecutionError, match=r"holds other neurons \(base and count \[0, 10\], now \[0, 12\]\)"
    ):
        swapped.adopt_state(running)
    assert running.step == 5


def test_a_core_placed_elsewhere_cannot_be_adopted_and_the_core_is_named() -> None:
    image = recurrent_network()
    running = Executor(image, BOARD)
    running.run(5)
    moved = dataclasses.replace(
        image,
        cores=tuple(
            dataclasses.replace(core, p=9) if core.xyp == (0, 0, 3) else core
            for core in image.cores
        ),
    )
    with pytest.raises(ExecutionError, match=r"core \(0, 0, 3\) runs SPIKE_SOURCE_ARRAY but"):
        Executor(moved, BOARD).adopt_state(running)
    assert running.step == 5


def test_another_timestep_cannot_be_adopted() -> None:
    image = recurrent_network()
    running = Executor(image, BOARD)
    slower = dataclasses.replace(image, timestep_us=2 * image.timestep_us)
    with pytest.raises(ExecutionError, match="the timestep is 1000 us, not 2000 us"):
        Executor(slower, BOARD).adopt_state(running)
