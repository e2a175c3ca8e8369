"""Rectangle packing over the triads of one machine; knows boards and requests, not jobs.

The machine is a W x H grid of triads. `MachineAllocator` keeps a boolean occupancy grid
(a triad is busy while any job holds it) and a map from board to holder. A request becomes
a rectangle of whole triads:

* ``(w, h)``: exactly that rectangle;
* ``(n)``: ceil(n/3) triads shaped like the reference's ``area_to_rect`` (the squarest
  exact factorisation, or a slightly larger one meeting ``min_ratio``), either way round;
* one board: a spare board of a triad already split for single boards, else a fresh free
  triad is split; a specific board takes its own triad the same way.

Candidate positions are found with a summed-area table of the busy (or avoided) triads, so
every free position of a shape is known in one numpy pass; positions are tried bottom row
first, left to right. A position is accepted by the reference's filter: breadth-first
search from board (x, y, 0) over live boards and live links inside the rectangle; the job
gets every reachable live board (over-allocation is normal). It is rejected if (x, y, 0) is
dead, too many boards are dead or unreachable, too many links between the boards are dead,
or a torus was required and no wrap-around link exists::

    y ^  . . . . .        # busy triad        R rectangle tried at (1, 0), 3 x 2
    2 |  # # . . .        BFS starts at board (1, 0, 0) and stays inside R
    1 |  . R R R .
    0 |  . R R R #
      +-----------> x

Out-of-service boards (taken out by an operator) count as dead for new allocations.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from allocator.errors import AllocatorError
from allocator.machine import Machine
from allocator.requests import JobRequest, RequestKind
from machine_models.geometry import (
    BOARDS_PER_TRIAD,
    BoardXYZ,
    Link,
    TriadXY,
    allocation_chip_grid,
    board_neighbour,
)

__all__ = [
    "Allocation",
    "AllocationConflictError",
    "MachineAllocator",
    "TriadRect",
    "rectangle_for_area",
]


class AllocationConflictError(AllocatorError):
    """A job id or board is already in use; the occupancy was left unchanged.

    Raised by `MachineAllocator.restore` and `allocate` when the caller's records disagree
    with the allocator's: a bug or corrupt persisted state, not a client error.
    """


@dataclass(frozen=True, slots=True)
class TriadRect:
    """A rectangle of triads: bottom-left (x, y) and size in triads."""

    x: int
    y: int
    width: int
    height: int

    def triads(self) -> Iterator[TriadXY]:
        """Every triad of the rectangle."""
        for x in range(self.x, self.x + self.width):
            for y in range(self.y, self.y + self.height):
                yield TriadXY(x, y)


@dataclass(frozen=True, slots=True)
class Allocation:
    """The boards given to one job on one machine.

    Attributes:
        machine_name: The machine.
        boards: Every live board the job holds.
        rectangle: The triads the job holds (a 1 x 1 rectangle for a single board).
        is_single_board: Whether this is a one-board allocation from a split triad.
        width_chips: Chip network width as spalloc reports it.
        height_chips: Chip network height as spalloc reports it.
        wraps_x: Whether wrap-around links join the boards in X.
        wraps_y: Whether wrap-around links join the boards in Y.
        peripheral_links: (board, link) pairs leading out of the allocation; they are
            disabled at power-on to isolate the job.
    """

    machine_name: str
    boards: frozenset[BoardXYZ]
    rectangle: TriadRect
    is_single_board: bool
    width_chips: int
    height_chips: int
    wraps_x: bool
    wraps_y: bool
    peripheral_links: frozenset[tuple[BoardXYZ, Link]]

    @property
    def origin(self) -> BoardXYZ:
        """The job's origin board, ``min(boards)``; its Ethernet chip is chip (0, 0)."""
        return min(self.boards)


def _squarest(area: int) -> tuple[int, int]:
    h = math.isqrt(area)
    while area % h:
        h -= 1
    return area // h, h


def rectangle_for_area(
    area: int, bound_width: int, bound_height: int, min_ratio: float
) -> tuple[int, int] | None:
    """The reference's rectangle of at least ``area`` triads inside the bounds.

    The squarest exact factorisation (landscape); if thinner than ``min_ratio`` a slightly
    larger rectangle that meets it; turned against the bounds' orientation; squashed to fit.

    Args:
        area: Triads needed, at least 1.
        bound_width: Width available.
        bound_height: Height available.
        min_ratio: Required h/w squareness in 0..1.

    Returns:
        (width, height) in triads, or None if no such rectangle fits.
    """
    if area <= 0 or bound_width <= 0 or bound_height <= 0 or area > bound_width * bound_height:
        return None
    w, h = _squarest(area)
    if h / w < min_ratio:
        real_w = math.sqrt(area / min_ratio)
        h = math.ceil(area / real_w)
        w = max(math.ceil(area / h), h)
    if bound_width > bound_height and w > h:
        w, h = h, w
    if w <= bound_width and h <= bound_height:
        return w, h
    if w > bound_width:
        w = bound_width
        h = math.ceil(area / w)
    else:
        h = bound_height
        w = math.ceil(area / h)
    if h <= bound_height and w <= bound_width and min(w, h) / max(w, h) >= min_ratio:
        return w, h
    return None


@dataclass(frozen=True)
class _Region:
    boards: frozenset[BoardXYZ]
    wraps_x: bool
    wraps_y: bool


_MAX_CACHED_REGIONS = 4096

_MAX_MASK_WIDTH = 62
"""The widest machine (in triads) whose rows `_free_positions` handles as integer bit masks."""
_BIT_WEIGHTS = np.array([1 << x for x in range(_MAX_MASK_WIDTH)], dtype=np.int64)


def _free_corners(rows: list[int], n_w: int, w: int, h: int) -> Iterator[tuple[int, int]]:
    """The free w x h corners of a grid given as one bit mask per row (bit x: blocked).

    Row by row: OR the h rows from y up, smear each blocked bit over the w - 1 places to
    its left, and every clear bit left (up to x = n_w - w) starts a free rectangle::

        blocked rows y, y+1:  ..#.....   ......#.    -> OR: ..#...#.
        w = 2, smeared left:  .##..##.   free starts x = 0, 3, 4 (and 7 is past the end)
    """
    starts = (1 << (n_w - w + 1)) - 1
    for y in range(len(rows) - h + 1):
        used = 0
        for row in rows[y : y + h]:
            used |= row
        run = used
        for shift in range(1, w):
            run |= used >> shift
        free = ~run & starts
        while free:
            low = free & -free
            yield low.bit_length() - 1, y
            free ^= low


"""Regions whose periphery `MachineAllocator` remembers (then it starts afresh)."""


class MachineAllocator:
    """Which boards of one machine are held, and by which job; pure and synchronous."""

    def __init__(self, machine: Machine) -> None:
        """Start with every board free.

        Args:
            machine: The machine whose boards are handed out.
        """
        self.machine = machine
        self._w = machine.width_triads
        self._h = machine.height_triads
        self._busy: npt.NDArray[np.bool_] = np.zeros((self._w, self._h), dtype=np.bool_)
        self._holder: dict[BoardXYZ, int] = {}
        self._jobs: dict[int, Allocation] = {}
        # Triads split for single boards -> the job ids holding boards there.
        self._split: dict[TriadXY, set[int]] = {}
        # The chip network of every one-board allocation.
        self._board_grid = allocation_chip_grid(
            1, 1, is_single_board=True, wraps_x=False, wraps_y=False
        )
        # The links leaving each single board that was ever allocated alone (fixed per board).
        self._board_periphery: dict[BoardXYZ, frozenset[tuple[BoardXYZ, Link]]] = {}
        # board -> the board across each of its six links (in `Link` order), built lazily
        self._neighbours: dict[BoardXYZ, tuple[BoardXYZ, ...]] = {}
        self._rect_boards: dict[TriadRect, frozenset[BoardXYZ]] = {}
        # the boards of a region -> the links leaving it: regions recur (the lowest free
        # rectangle of a shape is usually the same few), and they cost 6 steps a board
        self._region_periphery: dict[frozenset[BoardXYZ], frozenset[tuple[BoardXYZ, Link]]] = {}
        self._out_of_service: frozenset[BoardXYZ] = frozenset()
        # Links an operator took out, in both directions, like `Machine.dead_links`.
        self._links_out: frozenset[tuple[BoardXYZ, Link]] = frozenset()
        dead = np.zeros((self._w, self._h), dtype=np.int64)
        for board in machine.dead_boards:
            dead[board.x, board.y] = 1
        for board, _ in machine.dead_links:
            dead[board.x, board.y] = 1
        self._faulty = dead.astype(np.bool_)
        # request -> fits_ever's answer, which depends on the request and the machine only
        self._fits_ever: dict[JobRequest, bool] = {}

    def __repr__(self) -> str:
        return (
            f"MachineAllocator({self.machine.name!r}, {len(self._jobs)} jobs, "
            f"{self.n_allocated_boards} boards allocated, {self.n_free_boards} free)"
        )

    # ------------------------------------------------------------------ counts

    @property
    def n_allocated_boards(self) -> int:
        """Boards held by jobs."""
        return len(self._holder)

    @property
    def n_free_boards(self) -> int:
        """Live, in-service boards that no job holds."""
        return len(self.machine.live_boards - self._out_of_service - self._holder.keys())

    @property
    def out_of_service(self) -> frozenset[BoardXYZ]:
        """Boards an operator has taken out of service."""
        return self._out_of_service

    @property
    def out_of_service_links(self) -> frozenset[tuple[BoardXYZ, Link]]:
        """Links an operator has taken out of service, each in both directions."""
        return self._links_out

    def allocation(self, job_id: int) -> Allocation | None:
        """The allocation a job holds here, or None."""
        return self._jobs.get(job_id)

    @property
    def holders(self) -> Mapping[BoardXYZ, int]:
        """Every held board and its job id (a live view: do not keep it across changes)."""
        return self._holder

    def holder(self, board: BoardXYZ) -> int | None:
        """The job holding a board, or None."""
        return self._holder.get(board)

    def busy_triads(self) -> npt.NDArray[np.bool_]:
        """A copy of the occupancy grid, indexed [x, y]."""
        return self._busy.copy()

    # ------------------------------------------------------------- the filter

    def _usable(self, board: BoardXYZ, *, in_service_only: bool) -> bool:
        if not self.machine.is_live(board):
            return False
        return not (in_service_only and board in self._out_of_service)

    def _is_link_usable(self, board: BoardXYZ, link: Link, *, in_service_only: bool) -> bool:
        if not self.machine.is_link_live(board, link):
            return False
        return not (in_service_only and (board, link) in self._links_out)

    def _is_link_dead(
        self, board: BoardXYZ, link: Link, far: BoardXYZ, *, in_service_only: bool
    ) -> bool:
        dead = self.machine.dead_links
        if (board, link) in dead or (far, link.opposite) in dead:
            return True
        return in_service_only and (board, link) in self._links_out

    def _region(
        self, rect: TriadRect, request: JobRequest, *, in_service_only: bool
    ) -> _Region | None:
        root = BoardXYZ(rect.x, rect.y, 0)
        if not self._usable(root, in_service_only=in_service_only):
            return None
        x_end, y_end = rect.x + rect.width, rect.y + rect.height
        fault_free = not self._faulty[rect.x : x_end, rect.y : y_end].any() and not (
            in_service_only and (self._out_of_service or self._links_out)
        )
        boards: AbstractSet[BoardXYZ]
        if fault_free and rect.width < self._w and rect.height < self._h:
            # No dead boards or links and no wrap-around: every board is reachable, and
            # the set is the same each time the rectangle is tried.
            whole = self._rect_boards.get(rect)
            if whole is None:
                if len(self._rect_boards) >= _MAX_CACHED_REGIONS:
                    self._rect_boards.clear()
                whole = self._rect_boards[rect] = frozenset(
                    BoardXYZ(t.x, t.y, z) for t in rect.triads() for z in range(BOARDS_PER_TRIAD)
                )
            boards = whole
        else:
            found = {root}
            todo = deque([root])
            while todo:
                board = todo.popleft()
                for link in Link:
                    if not self._is_link_usable(board, link, in_service_only=in_service_only):
                        continue
                    nxt = board_neighbour(board, link, self._w, self._h).board
                    if (
                        nxt not in found
                        and rect.x <= nxt.x < x_end
                        and rect.y <= nxt.y < y_end
                        and self._usable(nxt, in_service_only=in_service_only)
                    ):
                        found.add(nxt)
                        todo.append(nxt)
            boards = found
        if request.max_dead_boards is not None:
            expected = (
                request.n_boards
                if request.kind is RequestKind.BOARDS
                else 3 * (rect.width * rect.height)
            )
            if expected - len(boards) > request.max_dead_boards:
                return None
        wraps_x = wraps_y = False
        n_dead_links = 0
        if rect.width == self._w or rect.height == self._h or request.max_dead_links is not None:
            for board in boards:
                for link in Link:
                    step = board_neighbour(board, link, self._w, self._h)
                    if step.board not in boards:
                        continue
                    wrapped = step.wraps_x or step.wraps_y
                    wraps_x |= step.wraps_x
                    wraps_y |= step.wraps_y
                    if self._is_link_dead(
                        board, link, step.board, in_service_only=in_service_only
                    ) and (not wrapped or request.require_torus):
                        n_dead_links += 1
        if request.require_torus and not (wraps_x or wraps_y):
            return None
        if request.max_dead_links is not None and n_dead_links > request.max_dead_links:
            return None
        return _Region(frozenset(boards), wraps_x, wraps_y)

    # ------------------------------------------------------------- shapes

    def _shapes(self, request: JobRequest) -> list[tuple[int, int]]:
        if request.kind is RequestKind.TRIADS:
            w, h = request.width_triads, request.height_triads
            if w <= 0 or h <= 0 or w > self._w or h > self._h:
                return []
            return [(w, h)]
        if request.kind is RequestKind.BOARDS:
            shape = rectangle_for_area(request.n_triads, self._w, self._h, request.min_ratio)
            if shape is None:
                return []
            w, h = shape
            shapes = [(w, h)]
            if h != w and h <= self._w and w <= self._h:
                shapes.append((h, w))
            return shapes
        return []

    def _torus_ok(self, request: JobRequest, shape: tuple[int, int]) -> bool:
        return not request.require_torus or shape == (self._w, self._h)

    # ------------------------------------------------------------- fits_ever

    def fits_ever(self, request: JobRequest) -> bool:
        """Whether the request could be met on this machine when it is empty.

        Conservative like the reference: a rectangle is tried at the four corners only.
        Out-of-service boards are ignored (they come back); dead boards and links are not.
        Answers are remembered: they depend on the request and the machine alone, and
        clients send the same few requests over and over.
        """
        known = self._fits_ever.get(request)
        if known is None:
            if len(self._fits_ever) >= _MAX_CACHED_REGIONS:
                self._fits_ever.clear()
            known = self._fits_ever[request] = self._fits_ever_uncached(request)
        return known

    def _fits_ever_uncached(self, request: JobRequest) -> bool:
        if request.machine is not None and request.machine != self.machine.name:
            return False
        if request.machine is None and not request.tags <= self.machine.tags:
            return False
        if request.kind is RequestKind.BOARD:
            return bool(self.machine.live_boards)
        if request.kind is RequestKind.SPECIFIC:
            return request.board is not None and self.machine.is_live(request.board)
        for w, h in self._shapes(request):
            if not self._torus_ok(request, (w, h)):
                continue
            corners = {(0, 0), (self._w - w, 0), (0, self._h - h), (self._w - w, self._h - h)}
            for x, y in sorted(corners):
                if self._region(TriadRect(x, y, w, h), request, in_service_only=False):
                    return True
        return False

    # ------------------------------------------------------------- allocate

    def _blocked(self, avoid: Iterable[TriadXY]) -> npt.NDArray[np.bool_]:
        blocked = self._busy.copy()
        for t in avoid:
            if 0 <= t.x < self._w and 0 <= t.y < self._h:
                blocked[t.x, t.y] = True
        return blocked

    @staticmethod
    def _free_positions(
        blocked: npt.NDArray[np.bool_], w: int, h: int
    ) -> Iterator[tuple[int, int]]:
        """Bottom-left corners (x, y) of every w x h rectangle with no blocked triad.

        In y-then-x order, the order corners are tried in, and lazily: allocation stops at
        the first that works, usually one of the first few.
        """
        n_w, n_h = blocked.shape
        if w > n_w or h > n_h:
            return iter(())
        if n_w > _MAX_MASK_WIDTH:
            table = np.zeros((n_w + 1, n_h + 1), dtype=np.int32)
            table[1:, 1:] = blocked.astype(np.int32).cumsum(0).cumsum(1)
            counts = table[w:, h:] - table[:-w, h:] - table[w:, :-h] + table[:-w, :-h]
            ys, xs = np.nonzero((counts == 0).T)
            return zip(xs.tolist(), ys.tolist(), strict=True)
        # Row y of the grid as an integer whose bit x is set where triad (x, y) is blocked.
        rows: list[int] = (blocked.T.astype(np.int64) @ _BIT_WEIGHTS[:n_w]).tolist()
        return _free_corners(rows, n_w, w, h)

    def allocate(
        self, request: JobRequest, job_id: int, avoid: frozenset[TriadXY] = frozenset()
    ) -> Allocation | None:
        """Give the request boards now, or return None if it does not fit now.

        Args:
            request: What is asked for; machine and tags are not checked here.
            job_id: The job that will hold the boards.
            avoid: Triads reserved for another job; nothing is taken from them.

        Raises:
            AllocationConflictError: The job already holds boards here.
        """
        if job_id in self._jobs:
            raise AllocationConflictError(
                f"job {job_id} already holds boards on {self.machine.name}"
            )
        if request.is_single_board:
            return self._allocate_board(request, job_id, avoid)
        blocked = self._blocked(avoid)
        for w, h in self._shapes(request):
            if not self._torus_ok(request, (w, h)):
                continue
            for x, y in self._free_positions(blocked, w, h):
                rect = TriadRect(x, y, w, h)
                region = self._region(rect, request, in_service_only=True)
                if region is not None:
                    return self._commit(job_id, rect, region)
        return None

    def _commit(self, job_id: int, rect: TriadRect, region: _Region) -> Allocation:
        """Give a job a rectangle of whole triads (`_commit_board` gives one board)."""
        grid = allocation_chip_grid(
            rect.width,
            rect.height,
            is_single_board=False,
            wraps_x=region.wraps_x,
            wraps_y=region.wraps_y,
        )
        allocation = Allocation(
            machine_name=self.machine.name,
            boards=region.boards,
            rectangle=rect,
            is_single_board=False,
            width_chips=grid.width_chips,
            height_chips=grid.height_chips,
            wraps_x=region.wraps_x,
            wraps_y=region.wraps_y,
            peripheral_links=self._periphery(region.boards),
        )
        self._jobs[job_id] = allocation
        for board in region.boards:
            self._holder[board] = job_id
        self._busy[rect.x : rect.x + rect.width, rect.y : rect.y + rect.height] = True
        return allocation

    def _periphery(self, boards: frozenset[BoardXYZ]) -> frozenset[tuple[BoardXYZ, Link]]:
        """The links that leave a set of boards."""
        cached = self._region_periphery.get(boards)
        if cached is not None:
            return cached
        links = tuple(Link)
        periphery = frozenset(
            (board, link)
            for board in boards
            for link, neighbour in zip(links, self._neighbours_of(board), strict=True)
            if neighbour not in boards
        )
        if len(self._region_periphery) >= _MAX_CACHED_REGIONS:
            self._region_periphery.clear()
        self._region_periphery[boards] = periphery
        return periphery

    def _neighbours_of(self, board: BoardXYZ) -> tuple[BoardXYZ, ...]:
        """The board across each link of `board`, in `Link` order."""
        neighbours = self._neighbours.get(board)
        if neighbours is None:
            neighbours = self._neighbours[board] = tuple(
                board_neighbour(board, link, self._w, self._h).board for link in Link
            )
        return neighbours

    def _spare_in(self, triad: TriadXY) -> BoardXYZ | None:
        """The first board of a triad that is live, in service and held by no job."""
        for z in range(BOARDS_PER_TRIAD):
            board = BoardXYZ(triad.x, triad.y, z)
            if board not in self._holder and self._usable(board, in_service_only=True):
                return board
        return None

    def _allocate_board(
        self, request: JobRequest, job_id: int, avoid: frozenset[TriadXY]
    ) -> Allocation | None:
        target = request.board
        if target is not None:
            if not self._usable(target, in_service_only=True) or target in self._holder:
                return None
            triad = TriadXY(target.x, target.y)
            if triad in avoid or (self._busy[triad] and triad not in self._split):
                return None
            return self._commit_board(job_id, target)
        for triad in sorted(self._split):
            # A split triad whose three boards are all held has nothing spare.
            if len(self._split[triad]) < BOARDS_PER_TRIAD and triad not in avoid:
                spare = self._spare_in(triad)
                if spare is not None:
                    return self._commit_board(job_id, spare)
        free = ~self._blocked(avoid) if avoid else ~self._busy
        for x, y in zip(*np.nonzero(free.T)[::-1], strict=True):
            spare = self._spare_in(TriadXY(int(x), int(y)))
            if spare is not None:
                return self._commit_board(job_id, spare)
        return None

    def _commit_board(self, job_id: int, board: BoardXYZ) -> Allocation:
        """Give a job one board of a triad split for single boards."""
        periphery = self._board_periphery.get(board)
        if periphery is None:
            periphery = self._board_periphery[board] = self._periphery(frozenset({board}))
        allocation = Allocation(
            machine_name=self.machine.name,
            boards=frozenset({board}),
            rectangle=TriadRect(board.x, board.y, 1, 1),
            is_single_board=True,
            width_chips=self._board_grid.width_chips,
            height_chips=self._board_grid.height_chips,
            wraps_x=False,
            wraps_y=False,
            peripheral_links=periphery,
        )
        self._jobs[job_id] = allocation
        self._holder[board] = job_id
        triad = TriadXY(board.x, board.y)
        holders = self._split.get(triad)
        if holders is None:
            self._split[triad] = {job_id}
            self._busy[triad] = True
        else:
            holders.add(job_id)
        return allocation

    # ------------------------------------------------------------- free/restore

    def free(self, job_id: int) -> frozenset[BoardXYZ]:
        """Release everything a job holds here; returns its boards (empty if none)."""
        allocation = self._jobs.pop(job_id, None)
        if allocation is None:
            return frozenset()
        for board in allocation.boards:
            del self._holder[board]
        rect = allocation.rectangle
        if allocation.is_single_board:
            triad = TriadXY(rect.x, rect.y)
            holders = self._split[triad]
            holders.discard(job_id)
            if holders:
                return allocation.boards
            del self._split[triad]
        self._busy[rect.x : rect.x + rect.width, rect.y : rect.y + rect.height] = False
        return allocation.boards

    def restore(
        self, job_id: int, boards: Iterable[BoardXYZ], rectangle: TriadRect | None = None
    ) -> Allocation:
        """Rebuild a job's allocation after a restart from its boards alone.

        One board is restored as a single-board allocation from a split triad; more are
        restored as the rectangle given, or else the bounding rectangle of their triads.

        Raises:
            AllocationConflictError: The job already holds boards, a board is held by
                another job, a board is not live, or the rectangle overlaps another job.
        """
        board_set = frozenset(BoardXYZ(*b) for b in boards)
        if job_id in self._jobs:
            raise AllocationConflictError(
                f"job {job_id} already holds boards on {self.machine.name}"
            )
        if not board_set:
            raise AllocationConflictError(f"job {job_id} has no boards to restore")
        for board in sorted(board_set):
            if not self.machine.is_live(board):
                raise AllocationConflictError(
                    f"board {tuple(board)} of job {job_id} is not a live board of "
                    f"{self.machine.name}"
                )
            holder = self._holder.get(board)
            if holder is not None:
                raise AllocationConflictError(
                    f"board {tuple(board)} of job {job_id} is held by job {holder}"
                )
        if len(board_set) == 1 and rectangle is None:
            (board,) = board_set
            triad = TriadXY(board.x, board.y)
            if self._busy[triad] and triad not in self._split:
                raise AllocationConflictError(
                    f"triad {tuple(triad)} of job {job_id} is held by another job"
                )
            return self._commit_board(job_id, board)
        if rectangle is None:
            xs = [b.x for b in board_set]
            ys = [b.y for b in board_set]
            rectangle = TriadRect(min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
        rect = rectangle
        if self._busy[rect.x : rect.x + rect.width, rect.y : rect.y + rect.height].any():
            raise AllocationConflictError(
                f"triads of job {job_id} at {(rect.x, rect.y)} overlap another job"
            )
        wraps_x = wraps_y = False
        for board in board_set:
            for link in Link:
                step = board_neighbour(board, link, self._w, self._h)
                if step.board in board_set:
                    wraps_x |= step.wraps_x
                    wraps_y |= step.wraps_y
        return self._commit(job_id, rect, _Region(board_set, wraps_x, wraps_y))

    # ------------------------------------------------------------- service

    def set_out_of_service(self, boards: Iterable[BoardXYZ]) -> None:
        """Replace the set of boards an operator has taken out; they are never allocated.

        Boards already held by a job stay with it until it frees them.
        """
        self._out_of_service = frozenset(BoardXYZ(*b) for b in boards)

    def set_out_of_service_links(self, links: Iterable[tuple[BoardXYZ, Link]]) -> None:
        """Replace the set of links an operator has taken out; they count as dead links.

        A link out of service is neither crossed when finding the boards of a region nor
        allowed in a region by a request's ``max_dead_links``, in both directions, exactly
        as a configured dead link. Allocations already made keep their boards.

        Args:
            links: (board, link) pairs, each named from either end.
        """
        both: set[tuple[BoardXYZ, Link]] = set()
        for board, link in links:
            near = BoardXYZ(*board)
            both.add((near, Link(link)))
            far = board_neighbour(near, Link(link), self._w, self._h).board
            both.add((far, Link(link).opposite))
        self._links_out = frozenset(both)
