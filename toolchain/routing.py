r"""Multicast routes: one tree per source core, then one table entry per tree node.

Paths are longest-dimension-first on the hexagonal mesh, as PACMAN and rig route. A chip
step (dx, dy) is written in three axes, x (east), y (north) and z (south-west); since
E + N + SW is no move at all, subtracting the median of (x, y, z) gives the shortest
form, and the path walks the longest axis first::

        N   NE              (dx, dy) = (3, 1)  ->  (x, y, z) = (3, 1, 0)
        | /                 median 1 removed    ->  (2, 0, -1): 2 x E, then 1 x NE
  W --- + --- E
      / |                   where a dimension wraps, every image of the target
    SW  S                   (dx +- width, dy +- height) is tried and the shortest kept

A path blocked by a dead chip or link is replaced by a breadth-first shortest path over
working links. The paths to all target chips of one source are merged into a tree: each
new path joins the tree at the last chip it shares with it, so every chip has exactly one
parent and no packet is ever delivered twice.

Entries are then made per chip and merged per partition: when every core of a partition
that passes a chip leaves it the same way, one entry with the partition mask serves them
all; otherwise each core gets an entry with the core mask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from machine_models.geometry import ChipXY, Link
from machine_models.image import RoutingEntry, route_word
from machine_models.topology import Topology
from toolchain.errors import RoutingError
from toolchain.keys import KeySpace, Partition, partition_of
from toolchain.placement import CoreLocation
from toolchain.splitting import Vertex

__all__ = ["RouteTree", "build_tables", "route_tree", "shortest_path"]

_AXIS_LINKS = ((Link.EAST, Link.WEST), (Link.NORTH, Link.SOUTH), (Link.SOUTH_WEST, Link.NORTH_EAST))


def _minimal_xyz(dx: int, dy: int) -> tuple[int, int, int]:
    median = sorted((dx, dy, 0))[1]
    return dx - median, dy - median, -median


def _vector(topology: Topology, src: ChipXY, dst: ChipXY) -> tuple[int, int, int]:
    xs = [dst.x - src.x]
    ys = [dst.y - src.y]
    if topology.wraps_x:
        xs += [xs[0] + topology.width_chips, xs[0] - topology.width_chips]
    if topology.wraps_y:
        ys += [ys[0] + topology.height_chips, ys[0] - topology.height_chips]
    best = min(
        (_minimal_xyz(dx, dy) for dx in xs for dy in ys), key=lambda v: (sum(abs(c) for c in v), v)
    )
    return best


def ldf_links(topology: Topology, src: ChipXY, dst: ChipXY) -> list[Link]:
    """The links of the longest-dimension-first path from ``src`` to ``dst``."""
    vector = _vector(topology, src, dst)
    links: list[Link] = []
    for axis in sorted(range(3), key=lambda a: (-abs(vector[a]), a)):
        positive, negative = _AXIS_LINKS[axis]
        links += [positive if vector[axis] > 0 else negative] * abs(vector[axis])
    return links


def _bfs_links(topology: Topology, src: ChipXY, dst: ChipXY) -> list[Link]:
    parent: dict[ChipXY, tuple[ChipXY, Link] | None] = {src: None}
    queue = deque([src])
    while queue:
        chip = queue.popleft()
        if chip == dst:
            break
        for link in Link:
            other = topology.neighbour(chip, link)
            if other is not None and other not in parent:
                parent[other] = (chip, link)
                queue.append(other)
    if dst not in parent:
        raise RoutingError(
            f"no working path from chip ({src.x}, {src.y}) to chip ({dst.x}, {dst.y})"
        )
    links: list[Link] = []
    step = parent[dst]
    while step is not None:
        links.append(step[1])
        step = parent[step[0]]
    return links[::-1]


def shortest_path(topology: Topology, src: ChipXY, dst: ChipXY) -> list[tuple[ChipXY, Link]]:
    """The hops (chip, link taken) from ``src`` to ``dst``; empty when they are equal.

    Raises:
        RoutingError: dead chips or links leave no path.
    """
    links = ldf_links(topology, src, dst)
    hops = _walk(topology, src, links)
    if hops is None:
        hops = _walk(topology, src, _bfs_links(topology, src, dst))
        assert hops is not None
    return hops


def _walk(
    topology: Topology, src: ChipXY, links: Iterable[Link]
) -> list[tuple[ChipXY, Link]] | None:
    hops: list[tuple[ChipXY, Link]] = []
    chip = src
    for link in links:
        nxt = topology.neighbour(chip, link)
        if nxt is None:
            return None
        hops.append((chip, link))
        chip = nxt
    return hops


@dataclass
class RouteTree:
    """A multicast tree: for each chip, the links it sends on and the cores it delivers to."""

    source: ChipXY
    links: dict[ChipXY, set[Link]] = field(default_factory=dict)
    cores: dict[ChipXY, set[int]] = field(default_factory=dict)

    def chips(self) -> set[ChipXY]:
        """Every chip the tree passes or ends on."""
        return set(self.links) | set(self.cores)

    def route(self, chip: ChipXY) -> int:
        """The route word of this tree at a chip."""
        return route_word(
            tuple(sorted(self.links.get(chip, ()))), tuple(sorted(self.cores.get(chip, ())))
        )


def route_tree(
    topology: Topology, source: ChipXY, targets: Mapping[ChipXY, Iterable[int]]
) -> RouteTree:
    """Route from one chip to cores on many chips.

    Args:
        topology: the allocation.
        source: chip of the sending core.
        targets: target chip -> target core numbers.

    Raises:
        RoutingError: a target chip cannot be reached.
    """
    tree = RouteTree(source)
    in_tree = {source}

    def distance(chip: ChipXY) -> int:
        return sum(abs(c) for c in _vector(topology, source, chip))

    for chip in sorted(targets, key=lambda c: (distance(c), c)):
        tree.cores.setdefault(chip, set()).update(targets[chip])
        if chip in in_tree:
            continue
        hops = shortest_path(topology, source, chip)
        chips = [source] + [topology.neighbour(c, lk) or c for c, lk in hops]
        join = max(i for i, c in enumerate(chips) if c in in_tree)
        for (hop_chip, link), nxt in zip(hops[join:], chips[join + 1 :], strict=True):
            tree.links.setdefault(hop_chip, set()).add(link)
            in_tree.add(nxt)
    return tree


def build_tables(
    topology: Topology,
    locations: Mapping[Vertex, CoreLocation],
    keys: KeySpace,
    targets: Mapping[Vertex, Iterable[CoreLocation]],
) -> dict[ChipXY, list[RoutingEntry]]:
    """Route every sending vertex and make each chip's merged entries.

    Args:
        topology: the allocation.
        locations: where each vertex runs.
        keys: the key layout.
        targets: sending vertex -> the cores that must receive its spikes.

    Returns:
        Entries per chip, sorted by key (they never overlap, so order is free).
    """
    per_chip: dict[ChipXY, dict[Partition, list[tuple[Vertex, int]]]] = {}
    for vertex, cores in targets.items():
        by_chip: dict[ChipXY, set[int]] = {}
        for core in cores:
            by_chip.setdefault(core.chip, set()).add(core.p)
        if not by_chip:
            continue
        tree = route_tree(topology, locations[vertex].chip, by_chip)
        for chip in tree.chips():
            per_chip.setdefault(chip, {}).setdefault(partition_of(vertex), []).append(
                (vertex, tree.route(chip))
            )
    tables: dict[ChipXY, list[RoutingEntry]] = {}
    for chip, partitions in per_chip.items():
        entries: list[RoutingEntry] = []
        for partition, routes in partitions.items():
            words = {route for _, route in routes}
            if len(words) == 1:
                key = keys.partition_key(partition)
                entries.append(RoutingEntry(key, keys.partition_mask, words.pop()))
            else:
                entries += [RoutingEntry(keys.core_key(v), keys.core_mask, r) for v, r in routes]
        tables[chip] = sorted(entries)
    return tables
