"""The chip network of one job, as its image is validated and run: boards, dead chips, dead links.

The job runner builds its image for what ``get_job_machine_info`` reports (the chip grid and
each board's Ethernet chip relative to the job's origin); the server validates and runs it
on the same network, with the machine's faults translated into the job's coordinates::

    machine chip (gx, gy) --(minus the origin chip, modulo the machine)--> job chip (x, y)

    board link b --L--> b' dead (configured, or taken out by an operator)
        => every chip link from a chip of b to a chip of b' is dead

Dead chips come from ``[dispatch] dead_chips`` in machine coordinates.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import cast

from pydantic import BaseModel, ConfigDict

from allocator.jobs import JobRecord
from allocator.locate import job_connections, job_origin
from allocator.machine import Machine
from machine_models.geometry import (
    TRIAD_SIZE_CHIPS,
    BoardXYZ,
    ChipXY,
    GeometryError,
    Link,
    board_chips,
    board_neighbour,
    chip_to_board,
)
from machine_models.topology import Topology

__all__ = ["TopologySpec", "job_topology"]


class TopologySpec(BaseModel):
    """Everything a `Topology` is built from, as plain data (it travels to worker processes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    width_chips: int
    height_chips: int
    ethernet_chips: tuple[tuple[int, int], ...]
    dead_chips: tuple[tuple[int, int], ...] = ()
    dead_links: tuple[tuple[int, int, int], ...] = ()

    def build(self) -> Topology:
        """The chip model's view of this network."""
        return Topology(
            self.width_chips,
            self.height_chips,
            [ChipXY(x, y) for x, y in self.ethernet_chips],
            dead_chips=[ChipXY(x, y) for x, y in self.dead_chips],
            dead_links=[(ChipXY(x, y), Link(link)) for x, y, link in self.dead_links],
        )


def job_topology(
    machine: Machine,
    record: JobRecord,
    *,
    dead_chips: Iterable[ChipXY] = (),
    out_of_service_links: Collection[tuple[BoardXYZ, Link]] = (),
) -> TopologySpec:
    """The network of an allocated job, with the machine's faults in job coordinates.

    Args:
        machine: the job's machine.
        record: the job (allocated: it has boards and a chip grid).
        dead_chips: dead chips of the machine, in machine chip coordinates.
        out_of_service_links: board links an operator took out.
    """
    assert record.width_chips is not None
    assert record.height_chips is not None
    boards = frozenset(record.boards)
    machine_w = TRIAD_SIZE_CHIPS * machine.width_triads
    machine_h = TRIAD_SIZE_CHIPS * machine.height_triads
    origin = job_origin(boards)

    def local(chip: ChipXY) -> ChipXY:
        return ChipXY((chip.x - origin.x) % machine_w, (chip.y - origin.y) % machine_h)

    ethernet = tuple(
        (int(xy[0]), int(xy[1]))
        for xy, _ in (
            (cast(list[int], connection[0]), connection[1])
            for connection in job_connections(machine, boards)
        )
    )
    dead = []
    for chip in dead_chips:
        try:
            board, _ = chip_to_board(
                ChipXY(chip.x % machine_w, chip.y % machine_h),
                machine.width_triads,
                machine.height_triads,
            )
        except GeometryError:
            continue
        if board in boards:
            dead.append(tuple(local(chip)))
    taken_out = {(BoardXYZ(*b), Link(link)) for b, link in out_of_service_links}
    dead_links = []
    for board in sorted(boards):
        dead_to = {
            board_neighbour(board, link, machine.width_triads, machine.height_triads).board
            for link in Link
            if not machine.is_link_live(board, link)
            or (board, link) in taken_out
            or (
                board_neighbour(board, link, machine.width_triads, machine.height_triads).board,
                link.opposite,
            )
            in taken_out
        }
        dead_to &= boards
        if not dead_to:
            continue
        for chip in board_chips(board, machine.width_triads, machine.height_triads):
            for link in Link:
                dx, dy = link.delta
                other = ChipXY((chip.x + dx) % machine_w, (chip.y + dy) % machine_h)
                other_board, _ = chip_to_board(other, machine.width_triads, machine.height_triads)
                if other_board != board and other_board in dead_to:
                    job_chip = local(chip)
                    dead_links.append((job_chip.x, job_chip.y, int(link)))
    return TopologySpec(
        width_chips=record.width_chips,
        height_chips=record.height_chips,
        ethernet_chips=ethernet,
        dead_chips=tuple((int(x), int(y)) for x, y in sorted(dead)),
        dead_links=tuple(sorted(set(dead_links))),
    )
