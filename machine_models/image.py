"""The placed-binary image of one job: what every core runs, its data regions, every router table.

An image is the whole load of a job, in a versioned little-endian container (layout in
``docs/image-format.md``)::

    header | core 0 | core 1 | ... | table of chip A | table of chip B | ...

    core   = x u16, y u16, p u8, app u8, n_regions u16, then per region:
             region_id u16, reserved u16, n_bytes u32, bytes padded to 4
    table  = x u16, y u16, n_entries u32, then per entry: key u32, mask u32, route u32

A route word has bits 0-5 for links E, NE, N, W, SW, S and bit 6 + p for core p. The bytes of
each region follow the layout of the application that reads them (``lif``, ``sources``,
``delays``); this module only carries them. ``validate`` lives in ``resources``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from machine_models.errors import ImageFormatError
from machine_models.geometry import ChipXY

__all__ = [
    "IMAGE_MAGIC",
    "IMAGE_VERSION",
    "AppId",
    "CoreImage",
    "CoreXYP",
    "Image",
    "RoutingEntry",
    "route_word",
]

IMAGE_MAGIC = b"ALLOTIMG"
IMAGE_VERSION = 4
N_LINKS = 6
ROUTE_BITS = 24

_HEADER = struct.Struct("<8sHHIII")
_CORE = struct.Struct("<HHBBH")
_REGION = struct.Struct("<HHI")
_TABLE = struct.Struct("<HHI")


class AppId(enum.IntEnum):
    """The core applications the model can run (the image's application id byte)."""

    IF_CURR_EXP = 1
    SPIKE_SOURCE_ARRAY = 2
    SPIKE_SOURCE_POISSON = 3
    DELAY_EXTENSION = 4
    IF_COND_EXP = 5
    IF_CURR_DELTA = 6
    IF_CURR_ALPHA = 7
    IZK_CURR_EXP = 8
    IZK_COND_EXP = 9


class CoreXYP(NamedTuple):
    """One core: chip coordinates and physical core number."""

    x: int
    y: int
    p: int


class RoutingEntry(NamedTuple):
    """One multicast entry: matches key k when ``k & mask == key``; ``route`` is the 24-bit word."""

    key: int
    mask: int
    route: int


def route_word(links: tuple[int, ...] = (), cores: tuple[int, ...] = ()) -> int:
    """Build a route word.

    Args:
        links: link numbers 0-5 to send on.
        cores: physical core numbers 0-17 to deliver to.

    Returns:
        The 24-bit route word.
    """
    word = 0
    for link in links:
        word |= 1 << int(link)
    for core in cores:
        word |= 1 << (N_LINKS + core)
    return word


@dataclass(frozen=True)
class CoreImage:
    """What one core runs: its application and its data regions by region number."""

    chip: ChipXY
    p: int
    app: AppId
    regions: Mapping[int, bytes]

    @property
    def xyp(self) -> CoreXYP:
        """The core's coordinates."""
        return CoreXYP(self.chip.x, self.chip.y, self.p)

    @property
    def sdram_bytes(self) -> int:
        """SDRAM its regions occupy, each padded to a word."""
        return sum((len(b) + 3) & ~3 for b in self.regions.values())


@dataclass(frozen=True)
class Image:
    """One job's load: cores, routing tables per chip and the timestep all cores share."""

    timestep_us: int
    cores: tuple[CoreImage, ...]
    tables: Mapping[ChipXY, tuple[RoutingEntry, ...]] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Serialise to the versioned binary container."""
        out = bytearray(
            _HEADER.pack(
                IMAGE_MAGIC, IMAGE_VERSION, 0, self.timestep_us, len(self.cores), len(self.tables)
            )
        )
        for core in self.cores:
            out += _CORE.pack(core.chip.x, core.chip.y, core.p, int(core.app), len(core.regions))
            for region_id in sorted(core.regions):
                data = core.regions[region_id]
                out += _REGION.pack(region_id, 0, len(data))
                out += data
                out += b"\0" * (-len(data) % 4)
        for chip in sorted(self.tables):
            entries = self.tables[chip]
            out += _TABLE.pack(chip.x, chip.y, len(entries))
            for entry in entries:
                out += struct.pack("<III", entry.key, entry.mask, entry.route)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Image:
        """Parse bytes written by :meth:`encode`.

        Raises:
            ImageFormatError: bad magic, unsupported version, unknown application or truncation.
        """
        view = memoryview(data)
        if len(view) < _HEADER.size:
            raise ImageFormatError(
                f"{len(view)} bytes is shorter than the {_HEADER.size}-byte header"
            )
        magic, version, _flags, timestep_us, n_cores, n_tables = _HEADER.unpack_from(view, 0)
        if magic != IMAGE_MAGIC:
            raise ImageFormatError(f"magic {magic!r} is not {IMAGE_MAGIC!r}")
        if version != IMAGE_VERSION:
            raise ImageFormatError(f"version {version} is not supported (only {IMAGE_VERSION})")
        offset = _HEADER.size

        def need(n_bytes: int) -> None:
            if offset + n_bytes > len(view):
                raise ImageFormatError(
                    f"truncated at byte {offset}: {n_bytes} more bytes needed, "
                    f"{len(view) - offset} left"
                )

        cores: list[CoreImage] = []
        for _ in range(n_cores):
            need(_CORE.size)
            x, y, p, app, n_regions = _CORE.unpack_from(view, offset)
            offset += _CORE.size
            try:
                app_id = AppId(app)
            except ValueError:
                raise ImageFormatError(
                    f"core ({x}, {y}, {p}) has unknown application {app}"
                ) from None
            regions: dict[int, bytes] = {}
            for _ in range(n_regions):
                need(_REGION.size)
                region_id, _reserved, n_bytes = _REGION.unpack_from(view, offset)
                offset += _REGION.size
                padded = n_bytes + (-n_bytes % 4)
                need(padded)
                regions[region_id] = bytes(view[offset : offset + n_bytes])
                offset += padded
            cores.append(CoreImage(ChipXY(x, y), p, app_id, regions))
        tables: dict[ChipXY, tuple[RoutingEntry, ...]] = {}
        for _ in range(n_tables):
            need(_TABLE.size)
            x, y, n_entries = _TABLE.unpack_from(view, offset)
            offset += _TABLE.size
            need(12 * n_entries)
            words = struct.unpack_from(f"<{3 * n_entries}I", view, offset)
            offset += 12 * n_entries
            tables[ChipXY(x, y)] = tuple(
                RoutingEntry(words[i], words[i + 1], words[i + 2]) for i in range(0, len(words), 3)
            )
        if offset != len(view):
            raise ImageFormatError(f"{len(view) - offset} trailing bytes after the last table")
        return cls(timestep_us, tuple(cores), tables)
