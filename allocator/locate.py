"""Where things are: boards, chips and jobs in the three coordinate systems.

Pure functions over a `Machine` and the boards a job holds; the service answers
`where_is`, `get_board_position`, `get_board_at_position` and the `connections` of
`get_job_machine_info` with them.

A job's chips are counted from its *origin*, the Ethernet chip of its smallest board
``min(boards)``; whole-machine chip coordinates wrap modulo the machine's 12W x 12H chips::

    machine chips (12W x 12H, a torus)          the job's view
    +-------------------------------+           +-----------+
    |        origin = eth(min(b))   |           |(0,0) is   |
    |            x-----------+      |   ---->   |the origin |
    |            | job boards|      |           |           |
    +-------------------------------+           +-----------+

so `job_chip = (machine_chip - origin) mod (12W, 12H)`, then mod the job's width/height.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from allocator.machine import Machine
from machine_models.geometry import (
    TRIAD_SIZE_CHIPS,
    BoardCFB,
    BoardXYZ,
    ChipXY,
    GeometryError,
    chip_to_board,
    ethernet_chip,
)

__all__ = [
    "JobPlace",
    "Location",
    "job_connections",
    "job_origin",
    "locate_board",
    "locate_chip",
    "locate_job_chip",
]


@dataclass(frozen=True, slots=True)
class JobPlace:
    """What `where_is` needs to know of a job holding boards."""

    job_id: int
    machine_name: str
    boards: Collection[BoardXYZ]
    width_chips: int
    height_chips: int


@dataclass(frozen=True, slots=True)
class Location:
    """A located chip: the reply of `where_is` when something is there."""

    machine: str
    logical: BoardXYZ
    physical: BoardCFB
    chip: ChipXY
    board_chip: ChipXY
    job_id: int | None
    job_chip: ChipXY | None

    def to_wire(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "logical": list(self.logical),
            "physical": list(self.physical),
            "chip": list(self.chip),
            "board_chip": list(self.board_chip),
            "job_id": self.job_id,
            "job_chip": None if self.job_chip is None else list(self.job_chip),
        }


JobOfBoard = Callable[[str, BoardXYZ], JobPlace | None]
"""Which job (if any) holds a board of a machine."""


def _machine_chips(machine: Machine) -> tuple[int, int]:
    return TRIAD_SIZE_CHIPS * machine.width_triads, TRIAD_SIZE_CHIPS * machine.height_triads


def job_origin(boards: Collection[BoardXYZ]) -> ChipXY:
    """The Ethernet chip of a job's smallest board: chip (0, 0) of the job."""
    return ethernet_chip(min(boards))


def _job_chip(machine: Machine, chip: ChipXY, job: JobPlace) -> ChipXY:
    width, height = _machine_chips(machine)
    origin = job_origin(job.boards)
    return ChipXY(
        (chip.x - origin.x) % width % job.width_chips,
        (chip.y - origin.y) % height % job.height_chips,
    )


def job_connections(machine: Machine, boards: Collection[BoardXYZ]) -> list[list[object]]:
    """`connections` of `get_job_machine_info`: each board's Ethernet chip from the origin."""
    width, height = _machine_chips(machine)
    origin = job_origin(boards)
    connections: list[list[object]] = []
    for board in sorted(boards):
        eth = ethernet_chip(board)
        xy = [(eth.x - origin.x) % width, (eth.y - origin.y) % height]
        connections.append([xy, machine.ip(board)])
    return connections


def _location(
    machine: Machine, board: BoardXYZ, chip: ChipXY, local: ChipXY, job_of_board: JobOfBoard
) -> Location | None:
    physical = machine.physical(board)
    if physical is None or not machine.is_live(board):
        return None
    job = job_of_board(machine.name, board)
    return Location(
        machine=machine.name,
        logical=board,
        physical=physical,
        chip=chip,
        board_chip=local,
        job_id=None if job is None else job.job_id,
        job_chip=None if job is None else _job_chip(machine, chip, job),
    )


def locate_board(machine: Machine, board: BoardXYZ, job_of_board: JobOfBoard) -> Location | None:
    """A logical board (x and y wrap, as in the reference); None for an empty slot."""
    if not 0 <= board.z < 3:
        return None
    board = BoardXYZ(board.x % machine.width_triads, board.y % machine.height_triads, board.z)
    return _location(machine, board, ethernet_chip(board), ChipXY(0, 0), job_of_board)


def locate_chip(machine: Machine, chip: ChipXY, job_of_board: JobOfBoard) -> Location | None:
    """A chip of the whole machine booted as one; coordinates wrap around the torus."""
    width, height = _machine_chips(machine)
    chip = ChipXY(chip.x % width, chip.y % height)
    try:
        board, local = chip_to_board(chip, machine.width_triads, machine.height_triads)
    except GeometryError:
        return None
    return _location(machine, board, chip, local, job_of_board)


def locate_job_chip(
    machine: Machine, job: JobPlace, chip: ChipXY, job_of_board: JobOfBoard
) -> Location | None:
    """A chip relative to a job's origin; None unless it lands on one of the job's boards."""
    origin = job_origin(job.boards)
    location = locate_chip(machine, ChipXY(origin.x + chip.x, origin.y + chip.y), job_of_board)
    if location is None or location.logical not in job.boards:
        return None
    return location
