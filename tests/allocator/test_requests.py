"""Tests of create_job argument forms and their contradictions."""

from __future__ import annotations

import pytest

from allocator.errors import RequestError
from allocator.requests import JobRequest, RequestKind
from machine_models.geometry import BoardXYZ


@pytest.mark.parametrize(
    ("args", "kind", "n_boards"),
    [
        ((), RequestKind.BOARD, 1),
        ((1,), RequestKind.BOARD, 1),
        ((7,), RequestKind.BOARDS, 7),
        ((2, 3), RequestKind.TRIADS, 18),
        ((1, 2, 0), RequestKind.SPECIFIC, 1),
    ],
)
def test_forms(args: tuple[int, ...], kind: RequestKind, n_boards: int) -> None:
    request = JobRequest.from_args(args)
    assert request.kind is kind
    assert request.n_boards == n_boards
    assert request.tags == frozenset({"default"})


def test_specific_board() -> None:
    request = JobRequest.from_args((1, 2, 0), max_dead_boards=3)
    assert request.board == BoardXYZ(1, 2, 0)
    assert request.max_dead_boards == 3


def test_defaults_from_none() -> None:
    request = JobRequest.from_args(
        (4,),
        machine=None,
        tags=None,
        min_ratio=None,
        max_dead_boards=None,
        max_dead_links=None,
        require_torus=None,
    )
    assert (request.min_ratio, request.require_torus, request.n_triads) == (0.0, False, 2)


def test_min_ratio_inverted() -> None:
    assert JobRequest.from_args((9,), min_ratio=4.0).min_ratio == 0.25


@pytest.mark.parametrize(
    ("args", "kwargs", "fact"),
    [
        ((), {"require_torus": True}, "require_torus must be False when allocating boards."),
        ((1, 2, 3), {"require_torus": True}, "require_torus must be False"),
        ((1, 2, 3, 4), {}, "at most 3 dimensions, got 4"),
        ((-2,), {}, "-2 is negative"),
        ((10**9,), {}, "exceeds"),
        (("3",), {}, "must be an integer, not '3'"),
        ((True,), {}, "must be an integer, not True"),
        ((3,), {"min_ratio": -1.0}, "min_ratio must be"),
        ((3,), {"min_ratio": float("nan")}, "min_ratio must be"),
        ((3,), {"max_dead_links": -1}, "max_dead_links must be >= 0"),
    ],
)
def test_errors(args: tuple[object, ...], kwargs: dict[str, object], fact: str) -> None:
    with pytest.raises(RequestError, match=fact.replace("(", r"\(").replace(".", r"\.")):
        JobRequest.from_args(args, **kwargs)  # type: ignore[arg-type]


def test_zero_boards_is_a_request_that_never_fits() -> None:
    assert JobRequest.from_args((0,)).n_triads == 0
