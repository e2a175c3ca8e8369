"""spynnaker.cfg and setup(): where a script runs, read the way sPyNNaker reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.pynn.config import read_settings
from toolchain.pynn.errors import NotSupportedError


def _write(path: Path, body: str) -> None:
    path.write_text("[Machine]\n" + body)


def test_no_file_and_no_arguments_run_virtually(tmp_path: Path) -> None:
    settings = read_settings({}, cwd=tmp_path, home=tmp_path)
    assert settings.is_virtual
    assert settings.sources == ()


def test_the_working_directory_wins_over_home_and_setup_over_both(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    _write(home / ".spynnaker.cfg", "spalloc_server = far.example\nspalloc_user = me\n")
    _write(cwd / "spynnaker.cfg", "spalloc_server = near.example\nspalloc_port = 22999\n")
    settings = read_settings({}, cwd=cwd, home=home)
    assert (settings.spalloc_server, settings.spalloc_port, settings.spalloc_user) == (
        "near.example",
        22999,
        "me",
    )
    assert not settings.is_virtual
    assert read_settings({"spalloc_server": "arg.example"}, cwd=cwd, home=home).spalloc_server == (
        "arg.example"
    )
    assert read_settings({"virtual_board": True}, cwd=cwd, home=home).is_virtual


def test_virtual_board_in_the_file_keeps_the_run_in_process(tmp_path: Path) -> None:
    _write(tmp_path / "spynnaker.cfg", "spalloc_server = x\nvirtual_board = True\n")
    assert read_settings({}, cwd=tmp_path, home=tmp_path / "nohome").is_virtual


def test_a_bad_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "spynnaker.cfg", "spalloc_port = lots\n")
    with pytest.raises(NotSupportedError, match=r"spalloc_port = 'lots' in .*spynnaker.cfg"):
        read_settings({}, cwd=tmp_path, home=tmp_path)
    _write(tmp_path / "spynnaker.cfg", "virtual_board = maybe\n")
    with pytest.raises(NotSupportedError, match="virtual_board"):
        read_settings({}, cwd=tmp_path, home=tmp_path)


def test_a_job_handed_over_is_read_with_its_owner(tmp_path: Path) -> None:
    _write(
        tmp_path / "spynnaker.cfg", "spalloc_server = x\nspalloc_job = 12\nspalloc_job_owner = sb\n"
    )
    settings = read_settings({}, cwd=tmp_path, home=tmp_path)
    assert (settings.spalloc_job, settings.spalloc_job_owner) == (12, "sb")
    assert read_settings({}, cwd=tmp_path / "none", home=tmp_path / "none").spalloc_job is None
    _write(tmp_path / "spynnaker.cfg", "spalloc_job = twelve\n")
    with pytest.raises(NotSupportedError, match="spalloc_job = 'twelve'"):
        read_settings({}, cwd=tmp_path, home=tmp_path)


def test_a_board_named_directly_is_refused_rather_than_run_virtually(tmp_path: Path) -> None:
    # sPyNNaker's `machine_name` (a board's address): the run used to go virtual silently.
    _write(tmp_path / "spynnaker.cfg", "machine_name = 192.168.240.1\nversion = 5\n")
    with pytest.raises(NotSupportedError, match=r"machine_name = 192.168.240.1 in .*spynnaker.cfg"):
        read_settings({}, cwd=tmp_path, home=tmp_path)
    assert read_settings({"virtual_board": True}, cwd=tmp_path, home=tmp_path).is_virtual
    _write(tmp_path / "spynnaker.cfg", "machine_name = None\n")  # sPyNNaker's default file
    assert read_settings({}, cwd=tmp_path, home=tmp_path).is_virtual
    _write(tmp_path / "spynnaker.cfg", "machine_name = 10.0.0.1\nspalloc_server = x\n")
    assert read_settings({}, cwd=tmp_path, home=tmp_path).spalloc_server == "x"
