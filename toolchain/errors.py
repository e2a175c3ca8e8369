"""The toolchain's exception hierarchy: every mapping failure the user can act on.

Each constructor takes the facts (population labels, sizes, chips) and builds a short
lowercase message that names them, so that a job runner can show it as it is.
"""

from __future__ import annotations

__all__ = [
    "AllocationError",
    "KeySpaceError",
    "NetworkError",
    "PlacementError",
    "RemoteError",
    "RemoteRunError",
    "ResourceError",
    "RoutingError",
    "RoutingTableFullError",
    "ToolchainError",
]


class ToolchainError(Exception):
    """Base of every error the toolchain raises on purpose.

    A caller that only wants to report a failed build catches this one.
    """


class NetworkError(ToolchainError):
    """The network description is invalid (bad parameter, size or connection).

    Fix the description; nothing was mapped.
    """


class AllocationError(ToolchainError):
    """The allocation description (width, height, boards, dead chips) is inconsistent."""


class ResourceError(ToolchainError):
    """A population slice needs more DTCM, SDRAM, delay slots or row length than a core has.

    Lower the neurons per core, shorten delays or thin the connectivity.
    """


class PlacementError(ToolchainError):
    """The cores of the network do not fit on the chips of the allocation.

    Ask for more boards or lower the number of cores the network needs.
    """


class KeySpaceError(ToolchainError):
    """The routing keys of the network do not fit in 32 bits."""


class RoutingError(ToolchainError):
    """No route exists between two chips (dead chips or links cut the allocation)."""


class RoutingTableFullError(RoutingError):
    """A chip's multicast table stays above the router's entries after compression."""

    def __init__(self, chip: tuple[int, int], n_entries: int, capacity: int) -> None:
        super().__init__(
            f"chip ({chip[0]}, {chip[1]}) needs {n_entries} routing entries after "
            f"compression but the router has {capacity}"
        )
        self.chip = chip
        self.n_entries = n_entries
        self.capacity = capacity


class RemoteError(ToolchainError):
    """The allocation server could not be reached, refused a request, or the job is gone.

    The message names the server and what failed; the boards may be gone (open a new
    `RemoteMachine`).
    """


class RemoteRunError(RemoteError):
    """A run on the server did not finish: it failed or was stopped; the message says why."""
