"""Tests of the SpiNNaker coordinate maths: board shape, ownership, links, chip grids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machine_models.geometry import (
    BOARD_CHIPS,
    CORES_PER_CHIP,
    TYPICAL_CORES,
    BoardXYZ,
    ChipGrid,
    ChipXY,
    GeometryError,
    Link,
    allocation_chip_grid,
    board_chips,
    board_neighbour,
    chip_to_board,
    ethernet_chip,
    is_board_chip,
    triad_owner,
)

# Ownership of a wrapped triad's chips as the spec gives it (top row y = 11).
SPEC_OWNER_TABLE = """
B B B B C C C C C C C C
B B B B C C C C C C C B
B B B B C C C C C C B B
B B B B C C C C C B B B
B B B B A A A A B B B B
B B B A A A A A B B B B
B B A A A A A A B B B B
B A A A A A A A B B B B
A A A A A A A A C C C C
A A A A A A A C C C C C
A A A A A A C C C C C C
A A A A A C C C C C C C
"""

W, H = 20, 20


def test_board_has_48_chips_in_the_spec_columns() -> None:
    assert len(BOARD_CHIPS) == 48
    column_ranges = {0: (0, 3), 1: (0, 4), 2: (0, 5), 3: (0, 6), 4: (0, 7), 5: (1, 7), 6: (2, 7)}
    column_ranges[7] = (3, 7)
    for x, (low, high) in column_ranges.items():
        assert sorted(c.y for c in BOARD_CHIPS if c.x == x) == list(range(low, high + 1))
    assert not is_board_chip(ChipXY(0, 4))
    assert not is_board_chip(ChipXY(8, 0))


def test_typical_cores_total_856() -> None:
    assert sum(TYPICAL_CORES.values()) == 856
    assert TYPICAL_CORES[ChipXY(5, 6)] == 17
    assert TYPICAL_CORES[ChipXY(0, 0)] == CORES_PER_CHIP


def test_owner_table_matches_spec() -> None:
    rows = SPEC_OWNER_TABLE.strip().splitlines()
    for row_index, row in enumerate(rows):
        y = 11 - row_index
        for x, letter in enumerate(row.split()):
            assert triad_owner(ChipXY(x, y)) == "ABC".index(letter), (x, y)


def test_triad_owner_rejects_outside_chip() -> None:
    with pytest.raises(GeometryError, match=r"\(12, 0\)"):
        triad_owner(ChipXY(12, 0))


def test_links() -> None:
    assert Link.EAST.opposite is Link.WEST
    assert Link.SOUTH_WEST.opposite is Link.NORTH_EAST
    assert Link.NORTH_EAST.delta == (1, 1)
    assert Link.SOUTH.delta == (0, -1)
    for link in Link:
        dx, dy = link.delta
        assert link.opposite.delta == (-dx, -dy)


@pytest.mark.parametrize(
    ("board", "chip"),
    [
        (BoardXYZ(0, 0, 0), ChipXY(0, 0)),
        (BoardXYZ(0, 0, 1), ChipXY(8, 4)),
        (BoardXYZ(0, 0, 2), ChipXY(4, 8)),
        (BoardXYZ(3, 2, 1), ChipXY(44, 28)),
    ],
)
def test_ethernet_chip(board: BoardXYZ, chip: ChipXY) -> None:
    assert ethernet_chip(board) == chip
    assert chip_to_board(chip, W, H) == (board, ChipXY(0, 0))


def test_ethernet_chip_rejects_bad_z() -> None:
    with pytest.raises(GeometryError, match="z 3"):
        ethernet_chip(BoardXYZ(0, 0, 3))


def test_chip_to_board_wraps() -> None:
    # Chip (0, 11) belongs to board B of the triad to the left, which wraps to x = W - 1.
    board, local = chip_to_board(ChipXY(0, 11), W, H)
    assert board == BoardXYZ(W - 1, 0, 1)
    assert local == ChipXY(4, 7)


def test_chip_to_board_rejects_outside_chip() -> None:
    with pytest.raises(GeometryError, match=r"\(240, 0\).*240 x 240"):
        chip_to_board(ChipXY(240, 0), W, H)


def test_chip_to_board_without_wrap() -> None:
    # A one-triad allocation is 16 x 16; chip (13, 5) pokes out from board z=1.
    assert chip_to_board(ChipXY(13, 5), 1, 1, wraps_x=False, wraps_y=False) == (
        BoardXYZ(0, 0, 1),
        ChipXY(5, 1),
    )
    # Chip (1, 5) would belong to a board left of the grid: it does not exist.
    with pytest.raises(GeometryError, match="on no board"):
        chip_to_board(ChipXY(1, 5), 2, 1, wraps_x=False, wraps_y=False)


def test_whole_machine_chip_count() -> None:
    chips = {
        c
        for x in range(W)
        for y in range(H)
        for z in range(3)
        for c in board_chips(BoardXYZ(x, y, z), W, H)
    }
    assert len(chips) == 240 * 240


boards_20 = st.builds(BoardXYZ, st.integers(0, W - 1), st.integers(0, H - 1), st.integers(0, 2))


@given(board=boards_20, local=st.sampled_from(BOARD_CHIPS))
def test_board_chip_round_trip(board: BoardXYZ, local: ChipXY) -> None:
    root = ethernet_chip(board)
    chip = ChipXY((root.x + local.x) % (12 * W), (root.y + local.y) % (12 * H))
    assert chip_to_board(chip, W, H) == (board, local)


@given(x=st.integers(0, 12 * W - 1), y=st.integers(0, 12 * H - 1))
def test_chip_round_trip(x: int, y: int) -> None:
    board, local = chip_to_board(ChipXY(x, y), W, H)
    assert is_board_chip(local)
    root = ethernet_chip(board)
    assert ((root.x + local.x) % (12 * W), (root.y + local.y) % (12 * H)) == (x, y)


@given(
    board=st.builds(BoardXYZ, st.integers(0, 4), st.integers(0, 2), st.integers(0, 2)),
    link=st.sampled_from(list(Link)),
)
def test_board_links_symmetric(board: BoardXYZ, link: Link) -> None:
    step = board_neighbour(board, link, 5, 3)
    back = board_neighbour(step.board, link.opposite, 5, 3)
    assert back.board == board
    assert (back.wraps_x, back.wraps_y) == (step.wraps_x, step.wraps_y)


def test_board_neighbour_table_and_wrap() -> None:
    step = board_neighbour(BoardXYZ(0, 0, 0), Link.EAST, W, H)
    assert step.board == BoardXYZ(0, H - 1, 2)
    assert (step.wraps_x, step.wraps_y) == (False, True)
    step = board_neighbour(BoardXYZ(3, 4, 1), Link.NORTH, W, H)
    assert step.board == BoardXYZ(4, 5, 0)
    assert not step.wraps_x
    with pytest.raises(GeometryError, match=r"\(20, 0, 0\)"):
        board_neighbour(BoardXYZ(20, 0, 0), Link.EAST, W, H)


@given(board=boards_20, local=st.sampled_from(BOARD_CHIPS), link=st.sampled_from(list(Link)))
def test_chip_links_leaving_a_board_match_board_links(
    board: BoardXYZ, local: ChipXY, link: Link
) -> None:
    root = ethernet_chip(board)
    dx, dy = link.delta
    target = ChipXY((root.x + local.x + dx) % (12 * W), (root.y + local.y + dy) % (12 * H))
    other, _ = chip_to_board(target, W, H)
    if other == board:
        assert is_board_chip(ChipXY(local.x + dx, local.y + dy))
        return
    # Chip link l leaves through the edge of board link l or board link l + 1.
    candidates = {
        board_neighbour(board, link, W, H).board,
        board_neighbour(board, Link((link + 1) % 6), W, H).board,
    }
    assert other in candidates


@pytest.mark.parametrize(
    ("w", "h", "single", "wx", "wy", "grid"),
    [
        (1, 1, True, False, False, ChipGrid(8, 8)),
        (1, 1, False, False, False, ChipGrid(16, 16)),
        (2, 1, False, False, False, ChipGrid(28, 16)),
        (20, 20, False, True, True, ChipGrid(240, 240)),
        (20, 3, False, True, False, ChipGrid(240, 40)),
    ],
)
def test_allocation_chip_grid(
    w: int, h: int, single: bool, wx: bool, wy: bool, grid: ChipGrid
) -> None:
    assert allocation_chip_grid(w, h, is_single_board=single, wraps_x=wx, wraps_y=wy) == grid
