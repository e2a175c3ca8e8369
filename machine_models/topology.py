"""The chip-level network of one allocation: which chips exist, their cores, their six links.

spalloc reports an allocation as a chip grid (width x height) plus the Ethernet chip of each
board. The chips are the 48-chip hexagons hung off those Ethernet chips::

    width % 12 == 0 (and not a single 8 x 8 board)  -> the X dimension wraps (a torus)
    width % 12 == 4 or width == 8                   -> no wrap: links off the edge do not exist

A link leaves chip (x, y) towards ``(x + dx, y + dy)`` (taken modulo the size where the
dimension wraps); it exists when both chips exist and neither the link (in either direction)
nor a chip at its ends is dead. "Uniform plus exceptions": every chip has 18 cores unless
``cores_per_chip`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from machine_models.errors import TopologyError
from machine_models.geometry import (
    BOARD_CHIPS,
    BOARD_SIZE_CHIPS,
    CORES_PER_CHIP,
    TRIAD_SIZE_CHIPS,
    ChipXY,
    Link,
)

__all__ = ["Topology"]


class Topology:
    """The chips, cores and links of one allocation.

    Args:
        width_chips: Width of the chip grid as spalloc reports it.
        height_chips: Height of the chip grid.
        ethernet_chips: The Ethernet chip of every allocated board.
        dead_chips: Chips that do not work.
        dead_links: (chip, link) pairs that do not work; the reverse direction dies with them.
        cores_per_chip: Chips with fewer than 18 working cores.

    Raises:
        TopologyError: the grid size is not one spalloc reports, or a board falls off it.
    """

    def __init__(
        self,
        width_chips: int,
        height_chips: int,
        ethernet_chips: Iterable[ChipXY],
        *,
        dead_chips: Iterable[ChipXY] = (),
        dead_links: Iterable[tuple[ChipXY, Link]] = (),
        cores_per_chip: Mapping[ChipXY, int] | None = None,
    ) -> None:
        for name, size in (("width", width_chips), ("height", height_chips)):
            if size <= 0 or (size != BOARD_SIZE_CHIPS and size % TRIAD_SIZE_CHIPS not in (0, 4)):
                raise TopologyError(f"{name} of {size} chips is not 8, 12n or 12n + 4")
        self.width_chips = width_chips
        self.height_chips = height_chips
        is_single = width_chips == BOARD_SIZE_CHIPS and height_chips == BOARD_SIZE_CHIPS
        self.wraps_x = not is_single and width_chips % TRIAD_SIZE_CHIPS == 0
        self.wraps_y = not is_single and height_chips % TRIAD_SIZE_CHIPS == 0
        self.ethernet_chips = tuple(ChipXY(*c) for c in ethernet_chips)
        self.dead_chips = frozenset(ChipXY(*c) for c in dead_chips)
        exists = np.zeros((width_chips, height_chips), dtype=np.bool_)
        for eth in self.ethernet_chips:
            for local in BOARD_CHIPS:
                x, y = eth.x + local.x, eth.y + local.y
                if self.wraps_x:
                    x %= width_chips
                if self.wraps_y:
                    y %= height_chips
                if not (0 <= x < width_chips and 0 <= y < height_chips):
                    raise TopologyError(
                        f"board with ethernet chip ({eth.x}, {eth.y}) leaves the "
                        f"{width_chips} x {height_chips} grid at chip ({x}, {y})"
                    )
                exists[x, y] = True
        self._exists = exists
        self._live = exists.copy()
        for chip in self.dead_chips:
            if self._in_grid(chip):
                self._live[chip.x, chip.y] = False
        self.cores_per_chip: Mapping[ChipXY, int] = dict(cores_per_chip or {})
        dead = set()
        for chip, link in dead_links:
            chip = ChipXY(*chip)
            link = Link(link)
            dead.add((chip, link))
            other = self._step(chip, link)
            if other is not None:
                dead.add((other, link.opposite))
        self.dead_links: frozenset[tuple[ChipXY, Link]] = frozenset(dead)

    @classmethod
    def single_board(cls) -> Topology:
        """One 8 x 8 board with its Ethernet chip at (0, 0)."""
        return cls(BOARD_SIZE_CHIPS, BOARD_SIZE_CHIPS, [ChipXY(0, 0)])

    def _in_grid(self, chip: ChipXY) -> bool:
        return 0 <= chip.x < self.width_chips and 0 <= chip.y < self.height_chips

    def _step(self, chip: ChipXY, link: Link) -> ChipXY | None:
        dx, dy = link.delta
        x, y = chip.x + dx, chip.y + dy
        if self.wraps_x:
            x %= self.width_chips
        if self.wraps_y:
            y %= self.height_chips
        target = ChipXY(x, y)
        return target if self._in_grid(target) else None

    def is_on_boards(self, chip: ChipXY) -> bool:
        """Whether the chip belongs to an allocated board (dead or alive)."""
        return self._in_grid(chip) and bool(self._exists[chip.x, chip.y])

    def is_live(self, chip: ChipXY) -> bool:
        """Whether the chip is on the allocated boards and not dead."""
        return self._in_grid(chip) and bool(self._live[chip.x, chip.y])

    def n_cores(self, chip: ChipXY) -> int:
        """Working cores of a chip, monitor included."""
        return self.cores_per_chip.get(chip, CORES_PER_CHIP)

    def chips(self) -> list[ChipXY]:
        """Every live chip, in x then y order."""
        xs, ys = np.nonzero(self._live)
        return [ChipXY(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]

    def neighbour(self, chip: ChipXY, link: Link) -> ChipXY | None:
        """The chip at the far end of a working link, or None if the link is dead or absent."""
        if not self.is_live(chip) or (chip, Link(link)) in self.dead_links:
            return None
        target = self._step(chip, Link(link))
        if target is None or not self.is_live(target):
            return None
        return target

    def neighbour_table(self, chip_index: Mapping[ChipXY, int]) -> npt.NDArray[np.int32]:
        """``table[i, link]``: index of the chip across ``link`` from chip i, or -1.

        Args:
            chip_index: Index of each live chip (as numbered by the caller).
        """
        table = np.full((len(chip_index), 6), -1, dtype=np.int32)
        for chip, i in chip_index.items():
            for link in Link:
                other = self.neighbour(chip, link)
                if other is not None:
                    table[i, link] = chip_index[other]
        return table

    def __repr__(self) -> str:
        return (
            f"Topology({self.width_chips}x{self.height_chips}, boards={len(self.ethernet_chips)}, "
            f"wraps=({self.wraps_x}, {self.wraps_y}), dead_chips={len(self.dead_chips)}, "
            f"dead_links={len(self.dead_links) // 2})"
        )
