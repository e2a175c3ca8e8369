"""Routing-table compression: merge entries with the same route into covering key/masks.

Two entries (k1, m1) and (k2, m2) with the same route are replaced by the smallest entry
that covers both: ``m = m1 & m2 & ~(k1 ^ k2)``, ``k = k1 & m``. A merge is accepted only if
the new entry intersects no entry with a *different* route, so the merged table routes every
key that the original table matched exactly as before, whatever the order of entries
(first-match semantics are preserved because no two entries with different routes
overlap). This is the rule of PACMAN's pair compressor. Keys that matched nothing may match
a merged entry afterwards; the toolchain never relies on default routing for them.

Two entries intersect when some key matches both: ``(k1 ^ k2) & m1 & m2 == 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from machine_models.image import RoutingEntry

__all__ = ["MAX_ROUTER_ENTRIES", "compress", "covers", "lookup"]

MAX_ROUTER_ENTRIES = 1023
"""Entries a chip's router offers to applications (one of 1,024 is the system's)."""


def lookup(entries: Sequence[RoutingEntry], key: int) -> int | None:
    """The route of the first entry matching ``key``, or None."""
    for entry in entries:
        if key & entry.mask == entry.key:
            return entry.route
    return None


def covers(outer: RoutingEntry, inner: RoutingEntry) -> bool:
    """Whether every key matching ``inner`` also matches ``outer``."""
    return outer.mask & ~inner.mask == 0 and inner.key & outer.mask == outer.key


def _merge(a: RoutingEntry, b: RoutingEntry) -> RoutingEntry:
    mask = a.mask & b.mask & ~(a.key ^ b.key) & 0xFFFF_FFFF
    return RoutingEntry(a.key & mask, mask, a.route)


def compress(entries: Sequence[RoutingEntry], target: int = 0) -> list[RoutingEntry]:
    """Merge same-route entries until no merge is possible or ``target`` is reached.

    Args:
        entries: a table whose entries with different routes do not overlap.
        target: stop once the table has at most this many entries (0: merge fully).

    Returns:
        The compressed table sorted by key, entries with different routes still disjoint.
    """
    table = list(dict.fromkeys(entries))
    changed = True
    while changed and len(table) > target:
        changed = False
        for route in sorted({e.route for e in table}):
            members = [e for e in table if e.route == route]
            others = [e for e in table if e.route != route]
            merged = _merge_group(members, others)
            if len(merged) < len(members):
                table = others + merged
                changed = True
                if len(table) <= target:
                    break
    return sorted(table, key=lambda e: (e.key, e.mask))


def _merge_group(members: list[RoutingEntry], others: list[RoutingEntry]) -> list[RoutingEntry]:
    """Greedily merge entries of one route that stay clear of every other route."""
    other_keys = np.array([e.key for e in others], dtype=np.uint64)
    other_masks = np.array([e.mask for e in others], dtype=np.uint64)
    alive = list(members)
    i = 0
    while i < len(alive):
        for j in range(i + 1, len(alive)):
            merged = _merge(alive[i], alive[j])
            clash = (
                (np.uint64(merged.key) ^ other_keys) & np.uint64(merged.mask) & other_masks
            ) == 0
            if not clash.any():
                alive[i] = merged
                del alive[j]
                alive = alive[: i + 1] + [e for e in alive[i + 1 :] if not covers(merged, e)]
                break
        else:
            i += 1
    return alive
