"""What a create_job call asks for, checked for contradictions before any job exists.

`JobRequest.from_args` turns the positional arguments and keyword values of create_job into
one of four kinds (spalloc-protocol §3):

=============  ==========================================================
``()``/``(1)`` `RequestKind.BOARD`: one board, anywhere
``(n)``        `RequestKind.BOARDS`: at least n boards, ceil(n/3) whole triads
``(w, h)``     `RequestKind.TRIADS`: exactly a w x h rectangle of triads
``(x, y, z)``  `RequestKind.SPECIFIC`: that board
=============  ==========================================================

A fourth positional argument is ``max_dead_boards``. ``None`` for any keyword means its
default. A request that is well formed but can never be met (zero boards, a board outside
every machine) is not an error here: the caller cancels it with the reference's reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from allocator.errors import RequestError
from machine_models.geometry import BoardXYZ

__all__ = ["MAX_COORDINATE", "MAX_REQUEST_BOARDS", "JobRequest", "RequestKind"]

MAX_REQUEST_BOARDS = 1_000_000
"""Largest board count or triad side accepted; anything bigger is a mistake, not a job."""

MAX_COORDINATE = 100_000
"""Largest board coordinate accepted."""


class RequestKind(Enum):
    """The four argument forms of create_job."""

    BOARD = "board"
    BOARDS = "boards"
    TRIADS = "triads"
    SPECIFIC = "specific"


def _int_arg(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{what} must be an integer, not {value!r}")
    return value


@dataclass(frozen=True)
class JobRequest:
    """A validated create_job request; hashable, so equal requests can share decisions.

    Attributes:
        kind: Which argument form was used.
        n_boards: Boards asked for (1 for BOARD and SPECIFIC, n for BOARDS, 3wh for TRIADS).
        width_triads: Rectangle width for TRIADS, else 0.
        height_triads: Rectangle height for TRIADS, else 0.
        board: The board asked for by SPECIFIC, else None.
        machine: Only this machine, or None.
        tags: Tags a machine must have (``{"default"}`` unless given).
        min_ratio: Squareness the BOARDS rectangle must reach, in 0..1.
        max_dead_boards: Dead or unreachable boards allowed, None for any.
        max_dead_links: Dead links between allocated boards allowed, None for any.
        require_torus: Whether wrap-around links are required.
    """

    kind: RequestKind
    n_boards: int = 1
    width_triads: int = 0
    height_triads: int = 0
    board: BoardXYZ | None = None
    machine: str | None = None
    tags: frozenset[str] = frozenset({"default"})
    min_ratio: float = 0.0
    max_dead_boards: int | None = None
    max_dead_links: int | None = None
    require_torus: bool = False

    @classmethod
    def from_args(
        cls,
        args: Sequence[object] = (),
        *,
        machine: str | None = None,
        tags: Iterable[str] | None = None,
        min_ratio: float | None = None,
        max_dead_boards: int | None = None,
        max_dead_links: int | None = None,
        require_torus: bool | None = None,
    ) -> JobRequest:
        """Build a request from create_job's dimensions (0 to 3 integers) and options.

        The wire rules of create_job (how many positional arguments, a fourth one meaning
        ``max_dead_boards``, ``machine`` and ``tags`` together) are the protocol's
        (`protocol.commands`, which binds a request before it gets here); this checks what
        the request means.

        Raises:
            RequestError: More than 3 dimensions, non-integer or negative sizes, sizes
                beyond `MAX_REQUEST_BOARDS`, ``require_torus`` with a single board, or a
                bad ``min_ratio`` or limit.
        """
        args = list(args)
        if len(args) > 3:
            raise RequestError(f"a request has at most 3 dimensions, got {len(args)}")
        if machine is not None and not isinstance(machine, str):
            raise RequestError(f"machine must be a string, not {machine!r}")
        tag_set = frozenset({"default"}) if tags is None else frozenset(tags)
        if not all(isinstance(t, str) for t in tag_set):
            raise RequestError(f"tags must be strings, not {sorted(map(repr, tag_set))}")
        ratio = 0.0 if min_ratio is None else min_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float):
            raise RequestError(f"min_ratio must be a number, not {ratio!r}")
        ratio = float(ratio)
        if not math.isfinite(ratio) or ratio < 0.0:
            raise RequestError(f"min_ratio must be a finite number >= 0, not {ratio!r}")
        if ratio > 1.0:
            ratio = 1.0 / ratio
        for name, limit in (
            ("max_dead_boards", max_dead_boards),
            ("max_dead_links", max_dead_links),
        ):
            if limit is not None and _int_arg(limit, name) < 0:
                raise RequestError(f"{name} must be >= 0, not {limit}")
        torus = False if require_torus is None else require_torus
        if not isinstance(torus, bool):
            raise RequestError(f"require_torus must be true or false, not {torus!r}")

        values = [_int_arg(a, f"positional argument {i + 1}") for i, a in enumerate(args)]
        for value in values:
            if value < 0:
                raise RequestError(f"size or coordinate {value} is negative")
            if value > MAX_REQUEST_BOARDS:
                raise RequestError(f"size {value} exceeds {MAX_REQUEST_BOARDS}")
        common = {
            "machine": machine,
            "tags": tag_set,
            "min_ratio": ratio,
            "max_dead_boards": max_dead_boards,
            "max_dead_links": max_dead_links,
            "require_torus": torus,
        }
        if not values or values == [1]:
            kind = RequestKind.BOARD
        elif len(values) == 1:
            return cls(RequestKind.BOARDS, n_boards=values[0], **common)  # type: ignore[arg-type]
        elif len(values) == 2:
            w, h = values
            return cls(
                RequestKind.TRIADS,
                n_boards=3 * w * h,
                width_triads=w,
                height_triads=h,
                **common,  # type: ignore[arg-type]
            )
        else:
            kind = RequestKind.SPECIFIC
            if max(values) > MAX_COORDINATE:
                raise RequestError(f"board {tuple(values)} is beyond coordinate {MAX_COORDINATE}")
        if torus:
            raise RequestError("require_torus must be False when allocating boards.")
        board = BoardXYZ(*values) if kind is RequestKind.SPECIFIC else None
        return cls(kind, n_boards=1, board=board, **common)  # type: ignore[arg-type]

    @functools.cached_property
    def description(self) -> str:
        """What is asked for, in a few words for the log: "3 x 2 triads on spinn-1200".

        Kept once made: the service logs it for every job, and clients send the same few
        requests over and over (parsed requests are shared).
        """
        if self.kind is RequestKind.TRIADS:
            what = f"{self.width_triads} x {self.height_triads} triads"
        elif self.kind is RequestKind.SPECIFIC:
            assert self.board is not None
            what = f"board ({self.board.x}, {self.board.y}, {self.board.z})"
        else:
            what = "1 board" if self.n_boards == 1 else f"{self.n_boards} boards"
        where = f"machine {self.machine}" if self.machine else f"tags {','.join(sorted(self.tags))}"
        return f"{what} on {where}"

    @property
    def is_single_board(self) -> bool:
        """Whether exactly one board is asked for (any board or a specific one)."""
        return self.kind in (RequestKind.BOARD, RequestKind.SPECIFIC)

    @property
    def n_triads(self) -> int:
        """Triads a BOARDS or TRIADS request needs (0 for single boards)."""
        if self.kind is RequestKind.BOARDS:
            return -(-self.n_boards // 3)
        if self.kind is RequestKind.TRIADS:
            return self.width_triads * self.height_triads
        return 0
