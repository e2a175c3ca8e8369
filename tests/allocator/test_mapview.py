"""The operator's map: terminal text and PNG, drawn from a machine snapshot."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from allocator.config import default_config
from allocator.mapview import JOB_KEYS, job_keys, render_png, render_text
from protocol.admin import BoardStatus, JobOnMachine, LinkOut, MachineState
from protocol.events import BoardState

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _snapshot() -> MachineState:
    """The real 1,200-board machine with two jobs, a dead and an out-of-service board."""
    machine = default_config().machines[0]
    special = {
        (0, 0, 0): (BoardState.ALLOCATED, 7),
        (0, 0, 1): (BoardState.ALLOCATED, 7),
        (0, 0, 2): (BoardState.ALLOCATED, 7),
        (5, 5, 1): (BoardState.POWERING, 9),
        (1, 0, 0): (BoardState.DEAD, None),
        (1, 1, 1): (BoardState.OUT_OF_SERVICE, None),
        (2, 0, 0): (BoardState.COOLING_DOWN, None),
    }
    boards = []
    for xyz, cfb in sorted(machine.board_locations.items()):
        state, job_id = special.get(tuple(xyz), (BoardState.FREE, None))
        boards.append(BoardStatus(
            x=xyz.x, y=xyz.y, z=xyz.z, cabinet=cfb.cabinet, frame=cfb.frame, board=cfb.board,
            state=state, job_id=job_id,
        ))  # fmt: skip
    jobs = (
        JobOnMachine(job_id=7, owner="alice", n_boards=3, state=3),
        JobOnMachine(job_id=9, owner="bob", n_boards=1, state=2),
    )
    return MachineState(
        name=machine.name, width=machine.width_triads, height=machine.height_triads,
        boards=tuple(boards), jobs=jobs,
    )  # fmt: skip


def test_text_map_places_boards_physically_and_logically() -> None:
    state = _snapshot()
    text = render_text(state, is_colour=False)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert "1200 boards" in lines[0]
    assert "1 dead" in lines[1]
    assert "1 out of service" in lines[1]
    # (0,0,0) is c0 f0 b0, (0,0,1) is c0 f0 b16, (0,0,2) c0 f0 b8 (SpiNNer layout).
    c0f0 = next(line for line in lines if line.startswith("  c0 f0 "))
    cells = c0f0[len("  c0 f0 ") :]
    assert (cells[0], cells[8], cells[16]) == ("A", "A", "A")
    assert cells.count("A") == 3
    # (1,0,0) is c1 f0 b0: dead; (1,1,1) is c1 f0 b18: out of service.
    c1f0 = next(line for line in lines if line.startswith("  c1 f0 "))[len("  c1 f0 ") :]
    assert (c1f0[0], c1f0[18]) == ("X", "#")
    # Logical rows: y0 is the last row; its first triad is job A's three boards.
    y0 = next(line for line in lines if line.startswith("  y0 "))
    triads = y0.split()[1:]
    assert triads[:3] == ["AAA", "X..", "~.."]
    y5 = next(line for line in lines if line.startswith("  y5 ")).split()[1:]
    assert y5[5] == ".B."
    assert "  A  job 7  owner alice, 3 boards" in lines
    assert "  B  job 9  owner bob, 1 boards" in lines


def test_colour_map_differs_only_by_escape_codes() -> None:
    state = _snapshot()
    coloured = render_text(state, is_colour=True)
    assert "\x1b[1;31mX" in coloured  # dead boards in bold red
    assert _ANSI.sub("", coloured) == render_text(state, is_colour=False)


def test_job_keys_follow_job_ids_and_run_out_gracefully() -> None:
    boards = tuple(
        BoardStatus(x=i, y=0, z=0, state=BoardState.ALLOCATED, job_id=1000 - i)
        for i in range(len(JOB_KEYS) + 2)
    )
    keys = job_keys(MachineState(name="m", width=len(boards), height=1, boards=boards))
    assert list(keys) == sorted(keys)
    assert keys[min(keys)] == "A"
    assert list(keys.values()).count("*") == 2


@pytest.mark.parametrize("is_draining", [False, True])
def test_png_is_a_real_image_with_marks(is_draining: bool) -> None:
    state = _snapshot().model_copy(update={"is_draining": is_draining})
    image = Image.open(io.BytesIO(render_png(state)))
    assert image.format == "PNG"
    assert image.width > 600
    assert image.height > 600
    colours = {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1 << 16) or []}
    assert (200, 0, 0) in colours  # the red cross of dead/out-of-service boards
    assert (31, 119, 180) in colours  # job A's colour


def test_png_without_physical_locations() -> None:
    boards = tuple(BoardStatus(x=0, y=0, z=z, state=BoardState.FREE) for z in range(3))
    image = Image.open(
        io.BytesIO(render_png(MachineState(name="m", width=1, height=1, boards=boards)))
    )
    assert image.format == "PNG"
    text = render_text(MachineState(name="m", width=1, height=1, boards=boards), is_colour=False)
    assert "(no physical locations known)" in text


def _with_extras() -> MachineState:
    """The snapshot plus a board cooling down for a retired job, a job with no board on the
    map, and two links out."""
    state = _snapshot()
    boards = tuple(
        b.model_copy(update={"job_id": 11}) if (b.x, b.y, b.z) == (2, 0, 0) else b
        for b in state.boards
    )
    jobs = (*state.jobs, JobOnMachine(job_id=13, owner="carol", n_boards=0, state=1))
    links = (
        LinkOut(x=0, y=0, z=1, link=0, is_dead=True),
        LinkOut(x=3, y=2, z=2, link=1, is_dead=False, reason="flaky cable"),
    )
    return state.model_copy(update={"boards": boards, "jobs": jobs, "links_out": links})


def test_legend_lists_only_jobs_with_boards_drawn_on_the_map() -> None:
    state = _with_extras()
    assert list(job_keys(state)) == [7, 9]
    text = render_text(state, is_colour=False)
    assert "job 11" not in text  # its board is drawn "~", cooling down
    assert "job 13" not in text  # nothing of it on the map
    assert "  B  job 9  owner bob, 1 boards" in text.splitlines()


def test_links_out_are_listed_and_drawn() -> None:
    state = _with_extras()
    lines = render_text(state, is_colour=False).splitlines()
    at = lines.index("links out (2):")
    assert lines[at + 1 : at + 3] == [
        "  (0, 0, 1) E dead",
        "  (3, 2, 2) NE out of service: flaky cable",
    ]
    assert "links out" not in render_text(_snapshot(), is_colour=False)
    image = Image.open(io.BytesIO(render_png(state))).convert("RGB")
    colours = {rgb for _, rgb in image.getcolors(maxcolors=1 << 16) or []}
    assert (230, 0, 0) in colours  # the dead link's tick
    assert (255, 140, 0) in colours  # the out-of-service link's tick
    plain = Image.open(io.BytesIO(render_png(_snapshot()))).convert("RGB")
    assert (230, 0, 0) not in {rgb for _, rgb in plain.getcolors(maxcolors=1 << 16) or []}
