r"""SpiNNaker geometry: links, chip/board/triad coordinates and the 48-chip board shape.

A SpiNN-5 board carries 48 chips in a hexagon that fits an 8 x 8 box. Chip (x, y) of a
board exists when ``0 <= x, y <= 7`` and ``-3 <= x - y <= 4``; local chip (0, 0) is the
board's Ethernet chip::

    y=7  .  .  .  .  #  #  #  #
    y=6  .  .  .  #  #  #  #  #
    y=5  .  .  #  #  #  #  #  #
    y=4  .  #  #  #  #  #  #  #
    y=3  #  #  #  #  #  #  #  #
    y=2  #  #  #  #  #  #  #  .
    y=1  #  #  #  #  #  #  .  .
    y=0  E  #  #  #  #  .  .  .
        x=0                 x=7

Three boards form a *triad* that tiles a 12 x 12 square of chips. Their Ethernet chips sit
at (0, 0) (board z=0, "A"), (8, 4) (z=1, "B") and (4, 8) (z=2, "C") inside the triad; the
parts of B and C that stick out of the square fill the gaps of the neighbouring triads.
Which board owns each chip of a triad when the pattern repeats (top row is y = 11)::

    B B B B C C C C C C C C
    B B B B C C C C C C C B
    B B B B C C C C C C B B
    B B B B C C C C C B B B
    B B B B A A A A B B B B
    B B B A A A A A B B B B
    B B A A A A A A B B B B
    B A A A A A A A B B B B
    A A A A A A A A C C C C
    A A A A A A A C C C C C
    A A A A A A C C C C C C
    A A A A A C C C C C C C

A machine is a W x H grid of triads, so logical boards are ``BoardXYZ(x, y, z)`` with
``0 <= x < W``, ``0 <= y < H`` and ``z`` in 0..2; its chips form a 12W x 12H torus. A piece
of a machine that does not wrap in a dimension is 4 chips larger there, because the parts of
boards that would have tucked into the far side poke out instead.

Boards are joined by six board links named like chip links (E, NE, N, W, SW, S). Crossing
board link ``l`` from board z moves by a fixed (dx, dy, dz) that depends on z and l only::

         ___
        / 2 \___        z0: N -> z2 same triad, NE -> z1 same triad, E -> z2 of (x, y-1)
        \___/ 1 \       z1: N -> z0 of (x+1, y+1), NE -> z2 of (x+1, y), E -> z0 of (x+1, y)
        / 0 \___/       z2: N -> z1 of (x, y+1), NE -> z0 of (x+1, y+1), E -> z1 same triad
        \___/

The chips of board link ``l``'s edge leave the board through chip links ``l - 1`` and ``l``
(mod 6): board link E carries chip links S and E, board link NE chip links E and NE, etc.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "BOARDS_PER_TRIAD",
    "BOARD_CHIPS",
    "BOARD_SIZE_CHIPS",
    "CORES_PER_CHIP",
    "ETHERNET_OFFSETS",
    "LINKS_PER_CHIP",
    "SEVENTEEN_CORE_CHIPS",
    "TRIAD_SIZE_CHIPS",
    "TYPICAL_CORES",
    "BoardCFB",
    "BoardStep",
    "BoardXYZ",
    "ChipGrid",
    "ChipXY",
    "GeometryError",
    "Link",
    "TriadXY",
    "allocation_chip_grid",
    "board_chips",
    "board_neighbour",
    "chip_to_board",
    "ethernet_chip",
    "is_board_chip",
    "triad_owner",
]


class GeometryError(ValueError):
    """A coordinate lies outside the machine or board it was given for.

    The caller passed an impossible coordinate; fix the coordinate, nothing else is wrong.
    """


class ChipXY(NamedTuple):
    """A chip coordinate: global in a machine, or local to a board."""

    x: int
    y: int


class BoardXYZ(NamedTuple):
    """A logical board coordinate: triad (x, y) and board z (0..2) within the triad."""

    x: int
    y: int
    z: int


class BoardCFB(NamedTuple):
    """A physical board position: cabinet, frame and board slot, counted from the top right."""

    cabinet: int
    frame: int
    board: int


class TriadXY(NamedTuple):
    """A triad coordinate in a machine of W x H triads."""

    x: int
    y: int


class ChipGrid(NamedTuple):
    """The size of a chip network in chips, as spalloc reports it."""

    width_chips: int
    height_chips: int


class Link(IntEnum):
    """A chip or board link direction; the opposite of link ``l`` is ``(l + 3) % 6``."""

    EAST = 0
    NORTH_EAST = 1
    NORTH = 2
    WEST = 3
    SOUTH_WEST = 4
    SOUTH = 5

    @property
    def opposite(self) -> Link:
        """The link pointing the other way."""
        return Link((self + 3) % 6)

    @property
    def delta(self) -> tuple[int, int]:
        """The (dx, dy) chip step taken when following this link."""
        return _LINK_DELTAS[self]


_LINK_DELTAS: dict[int, tuple[int, int]] = {
    0: (1, 0),
    1: (1, 1),
    2: (0, 1),
    3: (-1, 0),
    4: (-1, -1),
    5: (0, -1),
}

CORES_PER_CHIP = 18
"""Cores on a SpiNNaker chip, including the monitor core 0."""

LINKS_PER_CHIP = 6
"""Inter-chip links per chip."""

BOARD_SIZE_CHIPS = 8
"""A board's bounding box is 8 x 8 chips; a single-board machine is reported as 8 x 8."""

TRIAD_SIZE_CHIPS = 12
"""A triad of three boards tiles a 12 x 12 square of chips."""

BOARDS_PER_TRIAD = 3

ETHERNET_OFFSETS: tuple[ChipXY, ...] = (ChipXY(0, 0), ChipXY(8, 4), ChipXY(4, 8))
"""Ethernet chip of boards z = 0, 1, 2 relative to the triad's bottom-left chip."""


def is_board_chip(chip: ChipXY) -> bool:
    """Whether a local chip coordinate lies on the 48-chip board hexagon.

    Args:
        chip: The chip, relative to the board's Ethernet chip.
    """
    x, y = chip
    return 0 <= x <= 7 and 0 <= y <= 7 and -3 <= x - y <= 4


BOARD_CHIPS: tuple[ChipXY, ...] = tuple(
    ChipXY(x, y) for x in range(8) for y in range(8) if is_board_chip(ChipXY(x, y))
)
"""The 48 local chip coordinates of a board, column by column."""

SEVENTEEN_CORE_CHIPS: frozenset[ChipXY] = frozenset(
    ChipXY(x, y) for x, y in ((1, 1), (1, 3), (3, 1), (3, 3), (3, 5), (5, 2), (5, 4), (5, 6))
)
"""Board positions that typically expose only 17 working cores on the million-core machine."""

TYPICAL_CORES: Mapping[ChipXY, int] = MappingProxyType(
    {chip: CORES_PER_CHIP - (chip in SEVENTEEN_CORE_CHIPS) for chip in BOARD_CHIPS}
)
"""Typical working cores per local chip position: 40 x 18 + 8 x 17 = 856 per board."""


def ethernet_chip(board: BoardXYZ) -> ChipXY:
    """The global chip coordinate of a board's Ethernet chip.

    Args:
        board: The logical board.

    Raises:
        GeometryError: ``board.z`` is not 0, 1 or 2.
    """
    if not 0 <= board.z < BOARDS_PER_TRIAD:
        raise GeometryError(f"board z {board.z} is not 0, 1 or 2")
    offset = ETHERNET_OFFSETS[board.z]
    return ChipXY(TRIAD_SIZE_CHIPS * board.x + offset.x, TRIAD_SIZE_CHIPS * board.y + offset.y)


def _build_owner_table() -> dict[ChipXY, tuple[int, int, int]]:
    """For each chip of a triad, (dtx, dty, z) of the board owning it under repetition.

    (dtx, dty) is the owning board's triad relative to the chip's triad (-1, 0 or +1).
    """
    table: dict[ChipXY, tuple[int, int, int]] = {}
    for tx in range(TRIAD_SIZE_CHIPS):
        for ty in range(TRIAD_SIZE_CHIPS):
            owners = [
                (dtx, dty, z)
                for dtx in (-1, 0, 1)
                for dty in (-1, 0, 1)
                for z, off in enumerate(ETHERNET_OFFSETS)
                if is_board_chip(
                    ChipXY(
                        tx - (TRIAD_SIZE_CHIPS * dtx + off.x),
                        ty - (TRIAD_SIZE_CHIPS * dty + off.y),
                    )
                )
            ]
            # Boards tile the plane, so exactly one board owns each chip.
            assert len(owners) == 1, (tx, ty, owners)
            table[ChipXY(tx, ty)] = owners[0]
    return table


_OWNER = _build_owner_table()


def triad_owner(chip: ChipXY) -> int:
    """Board z (0, 1, 2) owning a chip of a triad when triads repeat (the table above).

    Args:
        chip: The chip relative to the triad's bottom-left chip, both coordinates in 0..11.

    Raises:
        GeometryError: The coordinate is outside the 12 x 12 triad.
    """
    try:
        return _OWNER[chip][2]
    except KeyError:
        raise GeometryError(f"chip {tuple(chip)} is outside the 12 x 12 triad") from None


def _dimension_chips(n_triads: int, wraps: bool) -> int:
    return TRIAD_SIZE_CHIPS * n_triads + (0 if wraps else 4)


def chip_to_board(
    chip: ChipXY,
    width_triads: int,
    height_triads: int,
    *,
    wraps_x: bool = True,
    wraps_y: bool = True,
) -> tuple[BoardXYZ, ChipXY]:
    """The board owning a global chip and the chip's coordinate local to that board.

    Args:
        chip: Global chip coordinate.
        width_triads: Width of the machine (or allocation) in triads.
        height_triads: Height of the machine (or allocation) in triads.
        wraps_x: Whether the chip network wraps in X (12W chips wide, else 12W + 4).
        wraps_y: Whether the chip network wraps in Y (12H chips high, else 12H + 4).

    Raises:
        GeometryError: The size is not positive, the chip is outside the chip grid, or
            (without wrap-around) no board of the grid owns it.
    """
    if width_triads <= 0 or height_triads <= 0:
        raise GeometryError(f"machine of {width_triads} x {height_triads} triads is empty")
    grid_w = _dimension_chips(width_triads, wraps_x)
    grid_h = _dimension_chips(height_triads, wraps_y)
    if not (0 <= chip.x < grid_w and 0 <= chip.y < grid_h):
        raise GeometryError(f"chip {tuple(chip)} is outside the {grid_w} x {grid_h} chip grid")
    dtx, dty, z = _OWNER[ChipXY(chip.x % TRIAD_SIZE_CHIPS, chip.y % TRIAD_SIZE_CHIPS)]
    triad_x = chip.x // TRIAD_SIZE_CHIPS + dtx
    triad_y = chip.y // TRIAD_SIZE_CHIPS + dty
    offset = ETHERNET_OFFSETS[z]
    local = ChipXY(
        chip.x - (TRIAD_SIZE_CHIPS * triad_x + offset.x),
        chip.y - (TRIAD_SIZE_CHIPS * triad_y + offset.y),
    )
    if wraps_x:
        triad_x %= width_triads
    if wraps_y:
        triad_y %= height_triads
    if not (0 <= triad_x < width_triads and 0 <= triad_y < height_triads):
        raise GeometryError(
            f"chip {tuple(chip)} is on no board of the {grid_w} x {grid_h} chip grid"
        )
    return BoardXYZ(triad_x, triad_y, z), local


def board_chips(board: BoardXYZ, width_triads: int, height_triads: int) -> Iterator[ChipXY]:
    """The 48 global chips of a board in a wrapping machine, in `BOARD_CHIPS` order.

    Args:
        board: The logical board.
        width_triads: Width of the machine in triads.
        height_triads: Height of the machine in triads.
    """
    root = ethernet_chip(board)
    grid_w = TRIAD_SIZE_CHIPS * width_triads
    grid_h = TRIAD_SIZE_CHIPS * height_triads
    for local in BOARD_CHIPS:
        yield ChipXY((root.x + local.x) % grid_w, (root.y + local.y) % grid_h)


_BOARD_STEP: dict[tuple[int, Link], tuple[int, int, int]] = {
    (0, Link.NORTH): (0, 0, 2),
    (0, Link.NORTH_EAST): (0, 0, 1),
    (0, Link.EAST): (0, -1, 2),
    (1, Link.NORTH): (1, 1, -1),
    (1, Link.NORTH_EAST): (1, 0, 1),
    (1, Link.EAST): (1, 0, -1),
    (2, Link.NORTH): (0, 1, -1),
    (2, Link.NORTH_EAST): (1, 1, -2),
    (2, Link.EAST): (0, 0, -1),
}
# The other three directions are the inverse steps, taken from the board they lead to.
_BOARD_STEP.update(
    {
        (z + dz, link.opposite): (-dx, -dy, -dz)
        for (z, link), (dx, dy, dz) in list(_BOARD_STEP.items())
    }
)


class BoardStep(NamedTuple):
    """The board across a board link, and whether the step wrapped around the torus."""

    board: BoardXYZ
    wraps_x: bool
    wraps_y: bool


def board_neighbour(
    board: BoardXYZ, link: Link, width_triads: int, height_triads: int
) -> BoardStep:
    """The board reached by crossing a board link, wrapping modulo the machine size.

    Args:
        board: The board the link leaves.
        link: The board link followed.
        width_triads: Width of the machine in triads.
        height_triads: Height of the machine in triads.

    Raises:
        GeometryError: The board is outside the machine.
    """
    if not (0 <= board.x < width_triads and 0 <= board.y < height_triads and 0 <= board.z < 3):
        raise GeometryError(
            f"board {tuple(board)} is outside the {width_triads} x {height_triads} machine"
        )
    dx, dy, dz = _BOARD_STEP[(board.z, Link(link))]
    raw_x = board.x + dx
    raw_y = board.y + dy
    x = raw_x % width_triads
    y = raw_y % height_triads
    return BoardStep(BoardXYZ(x, y, board.z + dz), x != raw_x, y != raw_y)


def allocation_chip_grid(
    width_triads: int,
    height_triads: int,
    *,
    is_single_board: bool,
    wraps_x: bool,
    wraps_y: bool,
) -> ChipGrid:
    """The chip network size spalloc reports for an allocation.

    A single board is 8 x 8. A w x h triad rectangle is ``12w`` chips wide if it wraps in X,
    else ``12w + 4``; likewise in Y. One triad gives 16 x 16, 2 x 1 triads 28 x 16, the
    whole 20 x 20 torus 240 x 240.

    Args:
        width_triads: Width of the allocated rectangle in triads.
        height_triads: Height of the allocated rectangle in triads.
        is_single_board: Whether exactly one board was allocated.
        wraps_x: Whether working wrap-around links join the rectangle in X.
        wraps_y: Whether working wrap-around links join the rectangle in Y.
    """
    if is_single_board:
        return ChipGrid(BOARD_SIZE_CHIPS, BOARD_SIZE_CHIPS)
    return ChipGrid(
        _dimension_chips(width_triads, wraps_x), _dimension_chips(height_triads, wraps_y)
    )
