"""Placing cores on the chips of an allocation.

Cores are placed in vertex order (a population's slices stay together, its delay
extensions follow), filling application cores 1 .. n-1 of one chip before moving on.
Chips are visited in a snake over the grid starting at the first live chip, so that
consecutive populations sit on neighbouring chips and routes stay short::

    y=2  -> -> ->
    y=1  <- <- <-      (x runs east, y runs north; dead chips are skipped)
    y=0  -> -> ->

Core 0 of every chip is the monitor and is never used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from machine_models.geometry import ChipXY
from machine_models.topology import Topology
from toolchain.allocation import application_cores
from toolchain.errors import PlacementError
from toolchain.splitting import Vertex

__all__ = ["CoreLocation", "Placement", "place"]


class CoreLocation(NamedTuple):
    """A core of a chip."""

    x: int
    y: int
    p: int

    @property
    def chip(self) -> ChipXY:
        """The chip of this core."""
        return ChipXY(self.x, self.y)


class Placement(NamedTuple):
    """Where each vertex runs."""

    locations: Mapping[Vertex, CoreLocation]

    def chips(self) -> list[ChipXY]:
        """Chips with at least one placed core, sorted."""
        return sorted({loc.chip for loc in self.locations.values()})


def chip_order(topology: Topology) -> list[ChipXY]:
    """Live chips in the snake order described in the module docstring."""
    rows: dict[int, list[ChipXY]] = {}
    for chip in topology.chips():
        rows.setdefault(chip.y, []).append(chip)
    order: list[ChipXY] = []
    for n, y in enumerate(sorted(rows)):
        row = sorted(rows[y])
        order.extend(row if n % 2 == 0 else reversed(row))
    return order


def place(vertices: Sequence[Vertex], topology: Topology) -> Placement:
    """Give every vertex its own application core.

    Raises:
        PlacementError: the allocation has fewer application cores than vertices.
    """
    slots = [
        CoreLocation(chip.x, chip.y, p)
        for chip in chip_order(topology)
        for p in application_cores(topology, chip)
    ]
    if len(vertices) > len(slots):
        raise PlacementError(
            f"the network needs {len(vertices)} cores but the allocation of "
            f"{len(topology.ethernet_chips)} boards has {len(slots)} application cores"
        )
    return Placement(dict(zip(vertices, slots, strict=False)))
