"""Tests of configuration loading: good files, the default machine, and named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.config import default_config, load_config
from allocator.errors import ConfigError
from allocator.machine import FrameCF
from machine_models.geometry import BoardCFB, BoardXYZ, Link

SMALL = """
[server]
seconds_before_free = 0.0
[[machines]]
name = "small"
tags = ["default", "test"]
width = 1
height = 1
board_locations = [[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 2, 0, 0, 2]]
dead_links = [[0, 0, 0, "north"], [0, 0, 1, 3]]
[machines.addresses]
base_ip = "10.1.0.0"
[[machines]]
name = "one"
single_board = {bmp_ip = "10.2.0.0", spinnaker_ip = "10.2.0.1"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "allotment.toml"
    path.write_text(text)
    return path


def test_default_config_layout() -> None:
    config = default_config()
    assert config.server.max_retired_jobs == 1200
    assert config.server.starvation_s == 600.0
    assert config.power.power_on_delay_s == 5.0
    (machine,) = config.machines
    assert machine.name == "spinn-1200"
    assert machine.tags == frozenset({"default"})
    assert (machine.width_triads, machine.height_triads) == (20, 20)
    assert len(machine.live_boards) == 1200
    expected = {
        (0, 0, 0): (0, 0, 0),
        (0, 0, 1): (0, 0, 16),
        (0, 0, 2): (0, 0, 8),
        (1, 0, 0): (1, 0, 0),
        (1, 1, 1): (1, 0, 18),
    }
    for board, slot in expected.items():
        assert machine.physical(BoardXYZ(*board)) == BoardCFB(*slot)
    assert machine.ip(BoardXYZ(0, 0, 0)) == "10.11.0.1"
    assert machine.bmp_ip(FrameCF(9, 4)) == "10.11.49.0"
    assert len(machine.frames) == 50


def test_small_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, SMALL))
    assert config.server.seconds_before_free == 0.0
    assert config.metrics.port == 0
    small, one = config.machines
    assert config.machine("one") is one
    assert small.tags == frozenset({"default", "test"})
    assert small.dead_links == frozenset(
        {(BoardXYZ(0, 0, 0), Link.NORTH), (BoardXYZ(0, 0, 1), Link.WEST)}
    )
    assert small.ip(BoardXYZ(0, 0, 2)) == "10.1.0.17"
    assert one.live_boards == frozenset({BoardXYZ(0, 0, 0)})


def test_csv_next_to_file(tmp_path: Path) -> None:
    (tmp_path / "layout.csv").write_text(
        "cabinet,frame,board,x,y\n0,0,0,0,0\n0,0,1,8,4\n0,0,2,4,8\n"
    )
    text = '[[machines]]\nname = "m"\nwidth = 1\nheight = 1\nboard_locations = "layout.csv"\n'
    (machine,) = load_config(_write(tmp_path, text)).machines
    assert machine.physical(BoardXYZ(0, 0, 1)) == BoardCFB(0, 0, 1)


@pytest.mark.parametrize(
    ("text", "fact"),
    [
        ("[server]\nmax_retired_jobs = -1\n", r"server\.max_retired_jobs.*-1"),
        ("[server]\ncolour = 1\n", r"server\.colour"),
        ("[server\n", r"not valid toml.*line 1"),
        (
            '[[machines]]\nname = "m"\nwidth = 1\nheight = 1\n'
            "board_locations = [[0,0,0,0,0,0],[0,0,1,0,0,1],[0,0,2,0,0,2]]\n"
            "dead_boards = [[0,0,1],[3,0,0]]\n",
            r"machines\[0\]\.dead_boards\[1\]: board \(3, 0, 0\) is outside",
        ),
        (
            '[[machines]]\nname = "m"\nwidth = 1\nheight = 1\n'
            "board_locations = [[0,0,0,0,0,0],[0,0,1,0,0,1],[0,0,2,0,0,2]]\n"
            'dead_links = [[0,0,0,"up"]]\n',
            r"machines\[0\]\.dead_links\[0\]: unknown link name 'up'",
        ),
        ('[[machines]]\nname = "m"\nwidth = 0\n', r"machines\[0\]\.width.*0"),
        (
            '[[machines]]\nname = "m"\nwidth = 1\nheight = 1\nboard_locations = "missing.csv"\n',
            r"machines\[0\]\.board_locations: board location file 'missing.csv' not found",
        ),
        (
            '[[machines]]\nname = "m"\nwidth = 1\nheight = 1\nboard_locations = [[0,0,0,0,0,0]]\n',
            r"machines\[0\]: .*live board \(0, 0, 1\) has no location",
        ),
        (
            '[[machines]]\nname = "a"\nsingle_board = {bmp_ip = "10.0.0.1", '
            'spinnaker_ip = "10.0.0.2"}\n[[machines]]\nname = "a"\n'
            'single_board = {bmp_ip = "10.0.0.3", spinnaker_ip = "10.0.0.4"}\n',
            r"machines\[1\]\.name: 'a' is already",
        ),
        (
            '[[machines]]\nname = "a"\nsingle_board = {bmp_ip = "10.0.0.1", '
            'spinnaker_ip = "10.0.0.2"}\n[[machines]]\nname = "b"\n'
            'single_board = {bmp_ip = "10.0.0.2", spinnaker_ip = "10.0.0.4"}\n',
            r"machines\[1\]: ip address 10\.0\.0\.2 is also used by machine 'a'",
        ),
    ],
)
def test_bad_files(tmp_path: Path, text: str, fact: str) -> None:
    with pytest.raises(ConfigError, match=fact):
        load_config(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(("port", "bind_port"), [("0", None), ("9464", 9464), ('"any"', 0)])
def test_metrics_port_zero_disables_and_any_binds_a_free_port(
    tmp_path: Path, port: str, bind_port: int | None
) -> None:
    config = load_config(_write(tmp_path, SMALL + f"\n[metrics]\nport = {port}\n"))
    assert config.metrics.bind_port == bind_port


@pytest.mark.parametrize("port", ['"free"', "70000", "-1"])
def test_a_metrics_port_neither_a_port_nor_any_is_refused(tmp_path: Path, port: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_config(_write(tmp_path, SMALL + f"\n[metrics]\nport = {port}\n"))
