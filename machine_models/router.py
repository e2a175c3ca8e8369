"""The multicast router: ordered first-match tables, multicast trees, drops and diagnostics.

Each chip's router looks a packet's key up in its table; the first entry (lowest index) with
``key & mask == entry.key`` gives a 24-bit route word: bits 0-5 send copies out of links,
bits 6 + p deliver to core p. When nothing matches::

    arrived on link L  -> default routed out of link (L + 3) % 6 (counted)
    sent by a local core -> dropped (counted)

A copy sent on a dead link, or off the edge of the allocation, is dropped and counted. A copy
that has made more hops than there are chips must be going round a loop; it is dropped and
counted instead of circling forever. The tables are static during a run, so the executor traces
each key once (:meth:`Router.trace`) and replays the result for every packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numba
import numpy as np
import numpy.typing as npt

from machine_models.geometry import ChipXY, Link
from machine_models.image import CoreXYP, RoutingEntry
from machine_models.topology import Topology

__all__ = ["COUNTER_NAMES", "Router", "Trace", "first_match"]

COUNTER_NAMES = (
    "local_mc",
    "external_mc",
    "default_routed",
    "dropped_no_route",
    "dropped_dead_link",
    "dropped_loop",
)
"""Per-router diagnostic counters, like the hardware's filters (spec §2.4)."""
LOCAL_MC, EXTERNAL_MC, DEFAULT_ROUTED, DROPPED_NO_ROUTE, DROPPED_DEAD_LINK, DROPPED_LOOP = range(6)


@numba.njit(cache=True)
def _first_match(
    keys: npt.NDArray[np.uint32], tkeys: npt.NDArray[np.uint32], tmasks: npt.NDArray[np.uint32]
) -> npt.NDArray[np.int32]:  # pragma: no cover - compiled
    out = np.full(keys.size, -1, dtype=np.int32)
    for i in range(keys.size):
        k = keys[i]
        for j in range(tkeys.size):
            if (k & tmasks[j]) == tkeys[j]:
                out[i] = j
                break
    return out


def first_match(
    keys: npt.ArrayLike, table_keys: npt.ArrayLike, table_masks: npt.ArrayLike
) -> npt.NDArray[np.int32]:
    """Index of the first entry matching each key, or -1 (vectorised over keys)."""
    return _first_match(
        np.atleast_1d(np.asarray(keys, dtype=np.uint32)),
        np.asarray(table_keys, dtype=np.uint32),
        np.asarray(table_masks, dtype=np.uint32),
    )


@dataclass
class Trace:
    """Where one packet with one key ends up, and what each router counted on the way."""

    deliveries: list[CoreXYP] = field(default_factory=list)
    counters: dict[tuple[ChipXY, int], int] = field(default_factory=dict)

    def count(self, chip: ChipXY, counter: int) -> None:
        """Add one to a router counter."""
        self.counters[(chip, counter)] = self.counters.get((chip, counter), 0) + 1


class Router:
    """The routers of every chip of an allocation.

    Args:
        tables: Each chip's ordered entries; a chip with no table has an empty one.
        topology: The allocation's chips and links.
    """

    def __init__(
        self, tables: Mapping[ChipXY, tuple[RoutingEntry, ...]], topology: Topology
    ) -> None:
        self.topology = topology
        self._tables: dict[ChipXY, tuple[npt.NDArray[np.uint32], ...]] = {}
        for chip, entries in tables.items():
            arr = np.array([tuple(e) for e in entries], dtype=np.uint32).reshape(-1, 3)
            self._tables[ChipXY(*chip)] = (arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy())
        self._max_hops = max(1, len(topology.chips()))

    def lookup(self, chip: ChipXY, key: int) -> int | None:
        """The route word of the first entry of ``chip`` matching ``key``, or None."""
        table = self._tables.get(chip)
        if table is None or table[0].size == 0:
            return None
        index = int(_first_match(np.array([key], dtype=np.uint32), table[0], table[1])[0])
        return None if index < 0 else int(table[2][index])

    def trace(self, key: int, source: ChipXY) -> Trace:
        """Follow one packet sent by a core of ``source`` through every router it reaches.

        Deliveries keep multiplicity: a chip reached twice delivers twice, as the hardware would.
        """
        result = Trace()
        queue: deque[tuple[ChipXY, int, int]] = deque([(source, -1, 0)])
        while queue:
            chip, in_link, hops = queue.popleft()
            if hops > self._max_hops:
                result.count(chip, DROPPED_LOOP)
                continue
            result.count(chip, LOCAL_MC if in_link < 0 else EXTERNAL_MC)
            route = self.lookup(chip, key)
            if route is None:
                if in_link < 0:
                    result.count(chip, DROPPED_NO_ROUTE)
                    continue
                result.count(chip, DEFAULT_ROUTED)
                route = 1 << ((in_link + 3) % 6)
            for link in Link:
                if route >> int(link) & 1:
                    target = self.topology.neighbour(chip, link)
                    if target is None:
                        result.count(chip, DROPPED_DEAD_LINK)
                    else:
                        queue.append((target, int(link.opposite), hops + 1))
            cores = route >> 6
            p = 0
            while cores:
                if cores & 1:
                    result.deliveries.append(CoreXYP(chip.x, chip.y, p))
                cores >>= 1
                p += 1
        return result
