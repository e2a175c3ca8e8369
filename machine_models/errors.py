"""Exceptions of the chip model: malformed images, images that do not fit the chips, bad runs.

Every error takes the facts (chip, core, sizes) and builds a short lowercase message naming them,
so a caller can show it as is.
"""

from __future__ import annotations

__all__ = [
    "DeadChipError",
    "DeadLinkError",
    "DtcmExceededError",
    "ExecutionError",
    "ImageError",
    "ImageFormatError",
    "MachineModelError",
    "MonitorCoreError",
    "NoSuchChipError",
    "NoSuchCoreError",
    "OverlappingKeysError",
    "RegionError",
    "ResultsFormatError",
    "RouterTableFullError",
    "SdramExceededError",
    "TopologyError",
]


class MachineModelError(Exception):
    """Base of every error raised by ``machine_models``."""


class TopologyError(MachineModelError):
    """The described allocation is not a legal chip grid; fix the width, height or boards."""


class ImageError(MachineModelError):
    """An image cannot be loaded on the allocated chips; the message names the chip or core."""


class ImageFormatError(ImageError):
    """The bytes are not an image of a supported version (bad magic, version or truncation)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"malformed image: {what}")


class RegionError(ImageError):
    """A core's data region is missing or its bytes do not follow the documented layout."""

    def __init__(self, x: int, y: int, p: int, what: str) -> None:
        super().__init__(f"core ({x}, {y}, {p}): {what}")


class SdramExceededError(ImageError):
    """The regions placed on one chip need more SDRAM than the chip offers."""

    def __init__(self, x: int, y: int, needed_bytes: int, usable_bytes: int) -> None:
        super().__init__(
            f"chip ({x}, {y}) needs {needed_bytes} bytes of sdram but has {usable_bytes}"
        )


class DtcmExceededError(ImageError):
    """One core's ring buffers and neuron state do not fit its DTCM."""

    def __init__(self, x: int, y: int, p: int, needed_bytes: int, dtcm_bytes: int) -> None:
        super().__init__(
            f"core ({x}, {y}, {p}) needs {needed_bytes} bytes of dtcm but has {dtcm_bytes}"
        )


class RouterTableFullError(ImageError):
    """A chip's multicast table has more entries than the router offers to applications."""

    def __init__(self, x: int, y: int, n_entries: int, max_entries: int) -> None:
        super().__init__(
            f"chip ({x}, {y}) has {n_entries} router entries but the router holds {max_entries}"
        )


class MonitorCoreError(ImageError):
    """An application was placed on core 0, which runs the monitor (SC&MP)."""

    def __init__(self, x: int, y: int) -> None:
        super().__init__(f"core ({x}, {y}, 0) is the monitor core and cannot run an application")


class NoSuchChipError(ImageError):
    """The image names a chip that is not part of the allocated boards."""

    def __init__(self, x: int, y: int) -> None:
        super().__init__(f"chip ({x}, {y}) is not on the allocated boards")


class NoSuchCoreError(ImageError):
    """The image names a core that the chip does not have."""

    def __init__(self, x: int, y: int, p: int, n_cores: int) -> None:
        super().__init__(f"core ({x}, {y}, {p}) does not exist: the chip has {n_cores} cores")


class DeadChipError(ImageError):
    """The image uses a chip that is marked dead."""

    def __init__(self, x: int, y: int) -> None:
        super().__init__(f"chip ({x}, {y}) is dead")


class DeadLinkError(ImageError):
    """A routing entry sends packets out of a link that is dead or leaves the allocation."""

    def __init__(self, x: int, y: int, link: int, entry_index: int) -> None:
        super().__init__(
            f"chip ({x}, {y}) router entry {entry_index} routes to link {link}, "
            "which is dead or leaves the allocation"
        )


class OverlappingKeysError(ImageError):
    """Two cores send packets with the same key, so routers could not tell them apart."""

    def __init__(self, first: tuple[int, int, int], second: tuple[int, int, int], key: int) -> None:
        super().__init__(f"cores {first} and {second} both send key {key:#010x}")


class ExecutionError(MachineModelError):
    """A run was asked for something the loaded job cannot do (for example a negative length)."""


class ResultsFormatError(MachineModelError):
    """The bytes are not a results file of a supported version (bad magic, index or length)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"malformed results: {what}")
