"""A job's chip network with the machine's faults, in job coordinates."""

from __future__ import annotations

import pytest

from allocator.dispatch.topology import job_topology
from allocator.jobs import JobRecord, JobState
from allocator.locate import job_connections
from allocator.machine import Machine
from machine_models.errors import DeadChipError, DeadLinkError
from machine_models.geometry import BoardCFB, BoardXYZ, ChipXY, Link, board_neighbour, chip_to_board
from machine_models.image import Image, RoutingEntry, route_word
from machine_models.resources import validate

TRIAD = (BoardXYZ(0, 0, 0), BoardXYZ(0, 0, 1), BoardXYZ(0, 0, 2))


def _machine(**kwargs: object) -> Machine:
    return Machine.with_standard_ips(
        "m",
        frozenset({"default"}),
        2,
        1,
        board_locations={
            BoardXYZ(x, 0, z): BoardCFB(0, 0, 3 * x + z) for x in range(2) for z in range(3)
        },
        **kwargs,  # type: ignore[arg-type]
    )


def _job(boards: tuple[BoardXYZ, ...], width: int, height: int) -> JobRecord:
    return JobRecord(
        job_id=7,
        owner="o",
        created_at=0.0,
        keepalive_s=None,
        state=JobState.READY,
        power=True,
        machine_name="m",
        boards=boards,
        width_chips=width,
        height_chips=height,
    )


def test_boards_and_chip_grid_are_those_get_job_machine_info_reports() -> None:
    machine = _machine()
    spec = job_topology(machine, _job(TRIAD, 16, 16))
    expected = [tuple(xy) for xy, _ in (c for c in job_connections(machine, TRIAD))]
    assert [tuple(e) for e in spec.ethernet_chips] == expected
    assert (spec.width_chips, spec.height_chips) == (16, 16)
    assert spec.dead_chips == spec.dead_links == ()


def test_a_dead_chip_of_the_machine_is_dead_in_job_coordinates() -> None:
    boards = (BoardXYZ(1, 0, 0), BoardXYZ(1, 0, 1), BoardXYZ(1, 0, 2))
    spec = job_topology(_machine(), _job(boards, 16, 16), dead_chips=[ChipXY(14, 3), ChipXY(2, 2)])
    assert spec.dead_chips == ((2, 3),), "(2, 2) is on board (0, 0, 0), not the job's"
    with pytest.raises(DeadChipError, match=r"chip \(2, 3\) is dead"):
        validate(Image(1000, (), {ChipXY(2, 3): ()}), spec.build())


def test_every_chip_link_between_two_boards_of_a_dead_board_link_is_dead() -> None:
    dead = (BoardXYZ(0, 0, 0), Link.NORTH)
    machine = _machine(dead_links=frozenset({dead}))
    spec = job_topology(machine, _job(TRIAD, 16, 16))
    assert spec.dead_links
    other = board_neighbour(dead[0], dead[1], 2, 1).board
    for x, y, link in spec.dead_links:
        owner, _ = chip_to_board(ChipXY(x, y), 2, 1)
        dx, dy = Link(link).delta
        there, _ = chip_to_board(ChipXY((x + dx) % 24, (y + dy) % 12), 2, 1)
        assert {owner, there} == {dead[0], other}
    x, y, link = spec.dead_links[0]
    entry = RoutingEntry(0, 0xFFFFFFFF, route_word(links=(link,)))
    with pytest.raises(DeadLinkError, match=rf"chip \({x}, {y}\) router entry 0 routes to link"):
        validate(Image(1000, (), {ChipXY(x, y): (entry,)}), spec.build())


def test_a_link_an_operator_took_out_counts_as_dead() -> None:
    spec = job_topology(
        _machine(), _job(TRIAD, 16, 16), out_of_service_links=[(BoardXYZ(0, 0, 1), Link.WEST)]
    )
    assert spec.dead_links
