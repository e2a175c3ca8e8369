"""The frozen description of one SpiNNaker machine: triads, boards, faults and addresses.

A machine is a grid of ``width_triads x height_triads`` triads of three boards each, so
its logical boards are ``BoardXYZ(x, y, z)``. The description is "uniform plus
exceptions": every board of the grid exists unless listed in ``dead_boards``, every board
link works unless listed in ``dead_links``, and addresses usually follow the standard
scheme of `Machine.with_standard_ips` rather than being written out board by board::

    BMP of frame (c, f)  = base_ip + c * cabinet_stride + f * frame_stride + bmp_offset
    board at (c, f, b)   = base_ip + c * cabinet_stride + f * frame_stride
                           + b * board_stride + spinnaker_offset

Physical positions (cabinet, frame, board) come only from ``board_locations`` (normally a
SpiNNer CSV of Ethernet chips, see `board_locations_from_spinner_csv`); there is no
formula. One BMP per (cabinet, frame) controls that frame's boards.

A link listed dead in one direction is treated as dead in both: traffic cannot use half a
link.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from allocator.errors import ConfigError
from machine_models.geometry import (
    BOARDS_PER_TRIAD,
    ETHERNET_OFFSETS,
    TRIAD_SIZE_CHIPS,
    BoardCFB,
    BoardXYZ,
    ChipXY,
    Link,
    board_neighbour,
)

__all__ = [
    "FrameCF",
    "Machine",
    "MachineError",
    "board_locations_from_spinner_csv",
    "standard_ips",
]


class MachineError(ConfigError):
    """A machine description is inconsistent; the message names the machine and the fact.

    The configuration holding it is refused as a whole.
    """


class FrameCF(NamedTuple):
    """A frame of boards, controlled by one BMP: (cabinet, frame)."""

    cabinet: int
    frame: int


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen_map(items: Mapping[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class Machine:
    """One machine: its grid, faults, physical layout and addresses; validated on creation.

    Attributes:
        name: Unique machine name clients use.
        tags: Tags a job's tags must be a subset of for this machine to be a candidate.
        width_triads: Width of the grid in triads.
        height_triads: Height of the grid in triads.
        dead_boards: Boards of the grid that do not exist or do not work.
        dead_links: (board, link) pairs that do not work (in either direction).
        board_locations: Physical slot of each board that has one.
        bmp_ips: BMP address of each frame.
        spinnaker_ips: Ethernet address of each board.
    """

    name: str
    tags: frozenset[str]
    width_triads: int
    height_triads: int
    dead_boards: frozenset[BoardXYZ]
    dead_links: frozenset[tuple[BoardXYZ, Link]]
    board_locations: Mapping[BoardXYZ, BoardCFB]
    bmp_ips: Mapping[FrameCF, str]
    spinnaker_ips: Mapping[BoardXYZ, str]
    _logical: Mapping[BoardCFB, BoardXYZ] = field(init=False, repr=False, compare=False)
    _live: frozenset[BoardXYZ] = field(init=False, repr=False, compare=False)
    _frames: Mapping[FrameCF, frozenset[BoardXYZ]] = field(init=False, repr=False, compare=False)
    _dead_links_both: frozenset[tuple[BoardXYZ, Link]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "tags", frozenset(self.tags))
        set_(self, "dead_boards", frozenset(BoardXYZ(*b) for b in self.dead_boards))
        set_(
            self,
            "dead_links",
            frozenset((BoardXYZ(*b), Link(link)) for b, link in self.dead_links),
        )
        set_(
            self,
            "board_locations",
            _frozen_map({BoardXYZ(*b): BoardCFB(*p) for b, p in self.board_locations.items()}),
        )
        set_(self, "bmp_ips", _frozen_map({FrameCF(*f): ip for f, ip in self.bmp_ips.items()}))
        set_(
            self,
            "spinnaker_ips",
            _frozen_map({BoardXYZ(*b): ip for b, ip in self.spinnaker_ips.items()}),
        )
        self._validate_grid()
        live = frozenset(
            BoardXYZ(x, y, z)
            for x in range(self.width_triads)
            for y in range(self.height_triads)
            for z in range(BOARDS_PER_TRIAD)
        ).difference(self.dead_boards)
        set_(self, "_live", live)
        logical: dict[BoardCFB, BoardXYZ] = {}
        frames: dict[FrameCF, set[BoardXYZ]] = {}
        for board, slot in sorted(self.board_locations.items()):
            if not self._inside(board):
                raise MachineError(
                    f"machine {self.name!r}: board location for {tuple(board)} is outside "
                    f"the {self.width_triads} x {self.height_triads} grid"
                )
            if slot in logical:
                raise MachineError(
                    f"machine {self.name!r}: boards {tuple(logical[slot])} and "
                    f"{tuple(board)} share slot {tuple(slot)}"
                )
            logical[slot] = board
            frames.setdefault(FrameCF(slot.cabinet, slot.frame), set()).add(board)
        set_(self, "_logical", MappingProxyType(logical))
        set_(
            self,
            "_frames",
            MappingProxyType({f: frozenset(bs) for f, bs in frames.items()}),
        )
        for board in sorted(live):
            if board not in self.board_locations:
                raise MachineError(
                    f"machine {self.name!r}: live board {tuple(board)} has no location"
                )
            if board not in self.spinnaker_ips:
                raise MachineError(
                    f"machine {self.name!r}: live board {tuple(board)} has no ip address"
                )
            slot = self.board_locations[board]
            if FrameCF(slot.cabinet, slot.frame) not in self.bmp_ips:
                raise MachineError(
                    f"machine {self.name!r}: frame {(slot.cabinet, slot.frame)} of board "
                    f"{tuple(board)} has no bmp ip address"
                )
        self._validate_addresses()
        both: set[tuple[BoardXYZ, Link]] = set()
        for board, link in self.dead_links:
            both.add((board, link))
            step = board_neighbour(board, link, self.width_triads, self.height_triads)
            both.add((step.board, link.opposite))
        set_(self, "_dead_links_both", frozenset(both))

    def _inside(self, board: BoardXYZ) -> bool:
        return (
            0 <= board.x < self.width_triads
            and 0 <= board.y < self.height_triads
            and 0 <= board.z < BOARDS_PER_TRIAD
        )

    def _validate_grid(self) -> None:
        if not self.name:
            raise MachineError("machine name is empty")
        if self.width_triads < 1 or self.height_triads < 1:
            raise MachineError(
                f"machine {self.name!r}: size {self.width_triads} x {self.height_triads} "
                "triads is empty"
            )
        for board in sorted(self.dead_boards):
            if not self._inside(board):
                raise MachineError(
                    f"machine {self.name!r}: dead board {tuple(board)} is outside the "
                    f"{self.width_triads} x {self.height_triads} grid"
                )
        for board, link in sorted(self.dead_links):
            if not self._inside(board):
                raise MachineError(
                    f"machine {self.name!r}: dead link {link.name.lower()} of board "
                    f"{tuple(board)} is outside the {self.width_triads} x "
                    f"{self.height_triads} grid"
                )

    def _validate_addresses(self) -> None:
        seen: dict[str, str] = {}
        for what, ips in (
            ("bmp", {str(k): v for k, v in self.bmp_ips.items()}),
            ("board", {str(tuple(k)): v for k, v in self.spinnaker_ips.items()}),
        ):
            for key, ip in sorted(ips.items()):
                try:
                    ipaddress.ip_address(ip)
                except ValueError:
                    raise MachineError(
                        f"machine {self.name!r}: {what} {key} address {ip!r} is not an ip address"
                    ) from None
                if ip in seen:
                    raise MachineError(
                        f"machine {self.name!r}: ip address {ip} is used by {seen[ip]} "
                        f"and {what} {key}"
                    )
                seen[ip] = f"{what} {key}"

    # ----------------------------------------------------------------- factories

    @classmethod
    def with_standard_ips(
        cls,
        name: str,
        tags: Iterable[str],
        width_triads: int,
        height_triads: int,
        board_locations: Mapping[BoardXYZ, BoardCFB],
        dead_boards: Iterable[BoardXYZ] = (),
        dead_links: Iterable[tuple[BoardXYZ, Link]] = (),
        **addresses: str,
    ) -> Machine:
        """A machine whose addresses follow the standard scheme (see the module docstring).

        Args:
            addresses: Overrides of the scheme's `standard_ips` keywords (``base_ip``,
                ``cabinet_stride``, ...); the defaults live there.

        Raises:
            MachineError: The description is inconsistent or an address overflows.
        """
        bmp_ips, spinnaker_ips = standard_ips(name, board_locations, **addresses)
        return cls(
            name=name,
            tags=frozenset(tags),
            width_triads=width_triads,
            height_triads=height_triads,
            dead_boards=frozenset(dead_boards),
            dead_links=frozenset(dead_links),
            board_locations=board_locations,
            bmp_ips=bmp_ips,
            spinnaker_ips=spinnaker_ips,
        )

    @classmethod
    def single_board(
        cls, name: str, tags: Iterable[str], bmp_ip: str, spinnaker_ip: str
    ) -> Machine:
        """A machine of one board: a 1 x 1 triad whose boards z=1 and z=2 are dead."""
        board = BoardXYZ(0, 0, 0)
        return cls(
            name=name,
            tags=frozenset(tags),
            width_triads=1,
            height_triads=1,
            dead_boards=frozenset({BoardXYZ(0, 0, 1), BoardXYZ(0, 0, 2)}),
            dead_links=frozenset(),
            board_locations={board: BoardCFB(0, 0, 0)},
            bmp_ips={FrameCF(0, 0): bmp_ip},
            spinnaker_ips={board: spinnaker_ip},
        )

    # ------------------------------------------------------------------- lookups

    @property
    def n_boards(self) -> int:
        """Boards in the grid, dead or alive."""
        return self.width_triads * self.height_triads * BOARDS_PER_TRIAD

    @property
    def live_boards(self) -> frozenset[BoardXYZ]:
        """Every board of the grid that is not dead."""
        return self._live

    @property
    def frames(self) -> frozenset[FrameCF]:
        """Every frame holding a board of this machine."""
        return frozenset(self._frames)

    def is_inside(self, board: BoardXYZ) -> bool:
        """Whether a board coordinate lies in the grid (dead or alive)."""
        return self._inside(board)

    def is_live(self, board: BoardXYZ) -> bool:
        """Whether a board is in the grid and not dead."""
        return board in self._live

    def physical(self, board: BoardXYZ) -> BoardCFB | None:
        """The physical slot of a board, or None if it has none."""
        return self.board_locations.get(board)

    def logical(self, slot: BoardCFB) -> BoardXYZ | None:
        """The logical board in a physical slot, or None if the slot is empty."""
        return self._logical.get(slot)

    def ip(self, board: BoardXYZ) -> str | None:
        """The Ethernet address of a board, or None if it has none."""
        return self.spinnaker_ips.get(board)

    def bmp_ip(self, frame: FrameCF) -> str | None:
        """The BMP address of a frame, or None if the frame is not part of this machine."""
        return self.bmp_ips.get(frame)

    def frame_of(self, board: BoardXYZ) -> FrameCF | None:
        """The frame holding a board, or None if the board has no location."""
        slot = self.board_locations.get(board)
        return None if slot is None else FrameCF(slot.cabinet, slot.frame)

    def boards_in_frame(self, frame: FrameCF) -> frozenset[BoardXYZ]:
        """The boards located in a frame (live or dead); empty for an unknown frame."""
        return self._frames.get(FrameCF(*frame), frozenset())

    def is_link_live(self, board: BoardXYZ, link: Link) -> bool:
        """Whether a board link works: both boards live and the link not dead either way."""
        if board not in self._live or (board, link) in self._dead_links_both:
            return False
        step = board_neighbour(board, link, self.width_triads, self.height_triads)
        return step.board in self._live

    def __hash__(self) -> int:
        return hash((self.name, self.width_triads, self.height_triads))

    def __repr__(self) -> str:
        return (
            f"Machine(name={self.name!r}, {self.width_triads}x{self.height_triads} triads, "
            f"{len(self._live)} live boards, {len(self.dead_links)} dead links)"
        )


def _ip_int(text: str, what: str, machine: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise MachineError(f"machine {machine!r}: {what} {text!r} is not an ipv4 address") from None


def standard_ips(
    name: str,
    board_locations: Mapping[BoardXYZ, BoardCFB],
    *,
    base_ip: str = "192.168.0.0",
    cabinet_stride: str = "0.0.5.0",
    frame_stride: str = "0.0.1.0",
    board_stride: str = "0.0.0.8",
    bmp_offset: str = "0.0.0.0",
    spinnaker_offset: str = "0.0.0.1",
) -> tuple[dict[FrameCF, str], dict[BoardXYZ, str]]:
    """BMP addresses per frame and board addresses by the standard scheme.

    Args:
        name: The machine's name, for error messages.
        board_locations: Physical slot of each board.
        base_ip: Address all others are offsets from.
        cabinet_stride: Added once per cabinet number.
        frame_stride: Added once per frame number.
        board_stride: Added once per board slot number (board addresses only).
        bmp_offset: Added to a frame's address to give its BMP.
        spinnaker_offset: Added to a board's address.

    Raises:
        MachineError: A value is not an IPv4 address or a result overflows.
    """
    base = _ip_int(base_ip, "base_ip", name)
    cab = _ip_int(cabinet_stride, "cabinet_stride", name)
    frm = _ip_int(frame_stride, "frame_stride", name)
    brd = _ip_int(board_stride, "board_stride", name)
    bmp_off = _ip_int(bmp_offset, "bmp_offset", name)
    spin_off = _ip_int(spinnaker_offset, "spinnaker_offset", name)

    def address(value: int) -> str:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise MachineError(
                f"machine {name!r}: standard address {value} overflows ipv4"
            ) from None

    bmp_ips: dict[FrameCF, str] = {}
    spinnaker_ips: dict[BoardXYZ, str] = {}
    for board, slot in board_locations.items():
        frame_base = base + slot.cabinet * cab + slot.frame * frm
        bmp_ips[FrameCF(slot.cabinet, slot.frame)] = address(frame_base + bmp_off)
        spinnaker_ips[BoardXYZ(*board)] = address(frame_base + slot.board * brd + spin_off)
    return bmp_ips, spinnaker_ips


def board_locations_from_spinner_csv(text: str) -> dict[BoardXYZ, BoardCFB]:
    """Board locations from a SpiNNer ``spinner-ethernet-chips`` CSV.

    The columns are cabinet, frame, board and the Ethernet chip's x and y (headed either
    ``x,y`` or ``eth_chip_x,eth_chip_y``). A board's z follows from its Ethernet chip's
    offset inside its 12 x 12 triad.

    Args:
        text: The CSV text, with a header row.

    Raises:
        MachineError: A column is missing, a value is not an integer, an Ethernet chip is
            not at a board position, or a board appears twice.
    """
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    reader.fieldnames = fields
    x_key = "x" if "x" in fields else "eth_chip_x"
    y_key = "y" if "y" in fields else "eth_chip_y"
    for needed in ("cabinet", "frame", "board", x_key, y_key):
        if needed not in fields:
            raise MachineError(f"board location csv has no {needed!r} column")
    locations: dict[BoardXYZ, BoardCFB] = {}
    for line_no, row in enumerate(reader, start=2):
        try:
            c, f, b, x, y = (int(row[k]) for k in ("cabinet", "frame", "board", x_key, y_key))
        except (TypeError, ValueError):
            raise MachineError(f"board location csv line {line_no} is not five integers") from None
        offset = ChipXY(x % TRIAD_SIZE_CHIPS, y % TRIAD_SIZE_CHIPS)
        if offset not in ETHERNET_OFFSETS or x < 0 or y < 0:
            raise MachineError(
                f"board location csv line {line_no}: chip {(x, y)} is not an ethernet chip"
            )
        board = BoardXYZ(
            x // TRIAD_SIZE_CHIPS, y // TRIAD_SIZE_CHIPS, ETHERNET_OFFSETS.index(offset)
        )
        if board in locations:
            raise MachineError(f"board location csv line {line_no}: board {tuple(board)} repeats")
        locations[board] = BoardCFB(c, f, b)
    return locations
