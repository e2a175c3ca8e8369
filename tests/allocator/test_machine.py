"""Tests of the frozen machine description: validation, lookups, standard addresses."""

from __future__ import annotations

import pytest

from allocator.errors import ConfigError
from allocator.machine import FrameCF, Machine, MachineError, board_locations_from_spinner_csv
from machine_models.geometry import BoardCFB, BoardXYZ, Link


def _layout(width: int, height: int) -> dict[BoardXYZ, BoardCFB]:
    boards = [BoardXYZ(x, y, z) for x in range(width) for y in range(height) for z in range(3)]
    return {b: BoardCFB(0, i // 24, i % 24) for i, b in enumerate(boards)}


def test_standard_ips_and_lookups() -> None:
    machine = Machine.with_standard_ips(
        "m",
        {"default"},
        2,
        1,
        _layout(2, 1),
        dead_boards={BoardXYZ(1, 0, 2)},
        base_ip="10.0.0.0",
    )
    assert machine.ip(BoardXYZ(0, 0, 1)) == "10.0.0.9"
    assert machine.bmp_ip(FrameCF(0, 0)) == "10.0.0.0"
    assert machine.physical(BoardXYZ(1, 0, 0)) == BoardCFB(0, 0, 3)
    assert machine.logical(BoardCFB(0, 0, 3)) == BoardXYZ(1, 0, 0)
    assert machine.logical(BoardCFB(0, 0, 23)) is None
    assert machine.is_live(BoardXYZ(0, 0, 0))
    assert not machine.is_live(BoardXYZ(1, 0, 2))
    assert not machine.is_live(BoardXYZ(2, 0, 0))
    assert len(machine.live_boards) == 5
    assert machine.boards_in_frame(FrameCF(0, 0)) == frozenset(_layout(2, 1))
    assert machine.frame_of(BoardXYZ(0, 0, 0)) == FrameCF(0, 0)


def test_dead_link_is_dead_both_ways() -> None:
    machine = Machine.with_standard_ips(
        "m",
        {"default"},
        2,
        2,
        _layout(2, 2),
        dead_links={(BoardXYZ(0, 0, 0), Link.NORTH)},
    )
    assert not machine.is_link_live(BoardXYZ(0, 0, 0), Link.NORTH)
    assert not machine.is_link_live(BoardXYZ(0, 0, 2), Link.SOUTH)
    assert machine.is_link_live(BoardXYZ(0, 0, 0), Link.NORTH_EAST)


def test_link_to_dead_board_is_dead() -> None:
    machine = Machine.with_standard_ips(
        "m", {"default"}, 2, 2, _layout(2, 2), dead_boards={BoardXYZ(0, 0, 1)}
    )
    assert not machine.is_link_live(BoardXYZ(0, 0, 0), Link.NORTH_EAST)


def test_single_board() -> None:
    machine = Machine.single_board("one", {"x"}, "10.0.0.2", "10.0.0.3")
    assert machine.live_boards == frozenset({BoardXYZ(0, 0, 0)})
    assert machine.ip(BoardXYZ(0, 0, 0)) == "10.0.0.3"


def test_machine_error_is_config_error() -> None:
    assert issubclass(MachineError, ConfigError)


@pytest.mark.parametrize(
    ("kwargs", "fact"),
    [
        ({"dead_boards": {BoardXYZ(5, 0, 0)}}, r"dead board \(5, 0, 0\) is outside"),
        ({"dead_links": {(BoardXYZ(0, 7, 0), Link.EAST)}}, r"dead link east of board \(0, 7, 0\)"),
    ],
)
def test_faults_outside_grid_rejected(kwargs: dict[str, object], fact: str) -> None:
    with pytest.raises(MachineError, match=fact):
        Machine.with_standard_ips("m", {"default"}, 2, 1, _layout(2, 1), **kwargs)  # type: ignore[arg-type]


def test_live_board_needs_location() -> None:
    layout = _layout(2, 1)
    del layout[BoardXYZ(1, 0, 1)]
    with pytest.raises(MachineError, match=r"live board \(1, 0, 1\) has no location"):
        Machine.with_standard_ips("m", {"default"}, 2, 1, layout)


def test_slots_unique() -> None:
    layout = _layout(1, 1)
    layout[BoardXYZ(0, 0, 2)] = layout[BoardXYZ(0, 0, 0)]
    with pytest.raises(MachineError, match=r"share slot \(0, 0, 0\)"):
        Machine.with_standard_ips("m", {"default"}, 1, 1, layout)


def test_ips_unique_and_valid() -> None:
    layout = _layout(1, 1)
    with pytest.raises(MachineError, match=r"10\.0\.0\.1 is used by"):
        Machine(
            name="m",
            tags=frozenset(),
            width_triads=1,
            height_triads=1,
            dead_boards=frozenset(),
            dead_links=frozenset(),
            board_locations=layout,
            bmp_ips={FrameCF(0, 0): "10.0.0.1"},
            spinnaker_ips={b: "10.0.0.1" if b.z == 0 else f"10.0.1.{b.z}" for b in layout},
        )
    with pytest.raises(MachineError, match="'nope' is not an ip address"):
        Machine.single_board("one", {"x"}, "nope", "10.0.0.3")


def test_spinner_csv() -> None:
    text = "cabinet,frame,board,x,y\n0,0,0,0,0\n0,0,16,8,4\n0,0,8,4,8\n1,0,18,20,16\n"
    assert board_locations_from_spinner_csv(text) == {
        BoardXYZ(0, 0, 0): BoardCFB(0, 0, 0),
        BoardXYZ(0, 0, 1): BoardCFB(0, 0, 16),
        BoardXYZ(0, 0, 2): BoardCFB(0, 0, 8),
        BoardXYZ(1, 1, 1): BoardCFB(1, 0, 18),
    }
    with pytest.raises(MachineError, match=r"line 2: chip \(1, 0\) is not an ethernet chip"):
        board_locations_from_spinner_csv("cabinet,frame,board,x,y\n0,0,0,1,0\n")
    with pytest.raises(MachineError, match="no 'frame' column"):
        board_locations_from_spinner_csv("cabinet,board,x,y\n0,0,0,0\n")
