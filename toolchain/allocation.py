"""The allocation a network is mapped onto, built from what spalloc reports.

``get_job_machine_info`` answers ``{"width", "height", "connections", "boards", ...}``: the
chip grid and, per board, its Ethernet chip relative to the job's origin. That is all the
chip model's :class:`~machine_models.topology.Topology` needs. :func:`virtual_allocation`
builds the same thing for a number of boards without asking a server, shaped as spalloc
shapes a request for ``n`` boards (``ceil(n / 3)`` triads in a near-square rectangle that
does not wrap; one board is the lone 8 x 8 board).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from machine_models.errors import TopologyError
from machine_models.geometry import (
    BOARDS_PER_TRIAD,
    ETHERNET_OFFSETS,
    TRIAD_SIZE_CHIPS,
    ChipXY,
    Link,
)
from machine_models.topology import Topology
from toolchain.errors import AllocationError

__all__ = ["allocation_from_machine_info", "application_cores", "virtual_allocation"]


def allocation_from_machine_info(
    info: Mapping[str, Any],
    *,
    dead_chips: Iterable[ChipXY] = (),
    dead_links: Iterable[tuple[ChipXY, Link]] = (),
    cores_per_chip: Mapping[ChipXY, int] | None = None,
) -> Topology:
    """Build the chip network of a job from its ``get_job_machine_info`` reply.

    Args:
        info: the reply: ``width`` and ``height`` in chips, ``connections`` as
            ``[[[x, y], ip], ...]`` (one Ethernet chip per board).
        dead_chips: chips known not to work.
        dead_links: (chip, link) pairs known not to work.
        cores_per_chip: chips with fewer than 18 working cores.

    Raises:
        AllocationError: the reply has no boards yet, or its grid is not a legal one.
    """
    width, height = info.get("width"), info.get("height")
    connections: Sequence[Any] | None = info.get("connections")
    if width is None or height is None or not connections:
        raise AllocationError("machine info has no allocated boards (job not allocated yet)")
    ethernet = [ChipXY(int(xy[0]), int(xy[1])) for xy, _ip in connections]
    try:
        return Topology(
            int(width),
            int(height),
            ethernet,
            dead_chips=dead_chips,
            dead_links=dead_links,
            cores_per_chip=cores_per_chip,
        )
    except TopologyError as exc:
        raise AllocationError(f"machine info {width} x {height} is not usable: {exc}") from exc


def virtual_allocation(
    n_boards: int,
    *,
    dead_chips: Iterable[ChipXY] = (),
    dead_links: Iterable[tuple[ChipXY, Link]] = (),
    cores_per_chip: Mapping[ChipXY, int] | None = None,
) -> Topology:
    """An allocation of at least ``n_boards`` boards shaped as spalloc shapes it.

    Args:
        n_boards: boards wanted; more than one gives whole triads.
        dead_chips: chips to mark dead.
        dead_links: links to mark dead.
        cores_per_chip: chips with fewer than 18 working cores.

    Raises:
        AllocationError: ``n_boards`` is below 1.
    """
    if n_boards < 1:
        raise AllocationError(f"an allocation needs at least 1 board, asked for {n_boards}")
    if n_boards == 1:
        return Topology(
            8,
            8,
            [ChipXY(0, 0)],
            dead_chips=dead_chips,
            dead_links=dead_links,
            cores_per_chip=cores_per_chip,
        )
    n_triads = math.ceil(n_boards / BOARDS_PER_TRIAD)
    width_triads = math.ceil(math.sqrt(n_triads))
    height_triads = math.ceil(n_triads / width_triads)
    ethernet = [
        ChipXY(TRIAD_SIZE_CHIPS * tx + off.x, TRIAD_SIZE_CHIPS * ty + off.y)
        for tx in range(width_triads)
        for ty in range(height_triads)
        for off in ETHERNET_OFFSETS
    ]
    return Topology(
        TRIAD_SIZE_CHIPS * width_triads + 4,
        TRIAD_SIZE_CHIPS * height_triads + 4,
        ethernet,
        dead_chips=dead_chips,
        dead_links=dead_links,
        cores_per_chip=cores_per_chip,
    )


def application_cores(topology: Topology, chip: ChipXY) -> range:
    """The cores of a chip that may run applications: 1 .. n_cores - 1 (0 is the monitor)."""
    return range(1, topology.n_cores(chip))
