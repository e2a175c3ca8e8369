"""Draws the operator's machine map from a `MachineState` snapshot: terminal text or a PNG.

Pure rendering, no I/O beyond returning text or bytes. Two layouts of the same boards:

* physical: one row per (cabinet, frame), one cell per board slot, as the racks stand;
* logical: the triad grid, `y` growing upwards, three cells per triad (z = 0, 1, 2).

Each board is one character (colour in the terminal, a filled box in the PNG)::

    .  free          A..Z a..z 0..9  allocated to the job of that key (see the legend)
    ~  cooling down  X  dead          #  out of service       (powering: the key, dimmed)

Keys go to jobs in job-id order, so the same snapshot always draws the same map; the
legend lists the jobs that have a board drawn with their key, nothing else. Links that
carry nothing (dead in the configuration, or taken out of service by an operator) are
listed under the map and, in the PNG, drawn as a red tick on the edge of the board facing
that direction in the logical grid.
"""

from __future__ import annotations

import io
import string
from collections.abc import Iterable
from typing import Final, NamedTuple

from PIL import Image, ImageDraw, ImageFont

from protocol.admin import BoardStatus, LinkOut, MachineState
from protocol.events import BoardState

__all__ = ["JOB_KEYS", "job_keys", "link_label", "render_png", "render_text"]

JOB_KEYS: Final = string.ascii_uppercase + string.ascii_lowercase + string.digits
"""Keys given to jobs in id order; later jobs share `*`."""

_STATE_CHARS: Final = {
    BoardState.FREE: ".",
    BoardState.COOLING_DOWN: "~",
    BoardState.DEAD: "X",
    BoardState.OUT_OF_SERVICE: "#",
}
_ANSI_RESET: Final = "\x1b[0m"
_ANSI_STATE: Final = {
    BoardState.FREE: "\x1b[2m",
    BoardState.COOLING_DOWN: "\x1b[36m",
    BoardState.DEAD: "\x1b[1;31m",
    BoardState.OUT_OF_SERVICE: "\x1b[1;33m",
}
_ANSI_JOBS: Final = tuple(f"\x1b[1;{30 + c}m" for c in (2, 4, 5, 6)) + tuple(
    f"\x1b[1;{90 + c}m" for c in (2, 4, 5, 6, 3)
)

_RGB = tuple[int, int, int]
_PNG_STATE: Final[dict[BoardState, _RGB]] = {
    BoardState.FREE: (225, 225, 225),
    BoardState.COOLING_DOWN: (170, 210, 235),
    BoardState.DEAD: (40, 40, 40),
    BoardState.OUT_OF_SERVICE: (245, 200, 60),
}
_PNG_JOBS: Final[tuple[_RGB, ...]] = (
    (31, 119, 180), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (23, 190, 207), (188, 189, 34), (255, 127, 14), (57, 59, 121), (99, 121, 57),
    (132, 60, 57), (123, 65, 115),
)  # fmt: skip
_MARK: Final = (200, 0, 0)
_INK: Final = (20, 20, 20)
_BACKGROUND: Final = (255, 255, 255)


class _Style(NamedTuple):
    char: str
    ansi: str


_KEYED_STATES: Final = (BoardState.ALLOCATED, BoardState.POWERING)


def job_keys(state: MachineState) -> dict[int, str]:
    """Return the key of every job with a board drawn on the map, in job-id order.

    A board cooling down still names the job that held it, but is drawn `~`: that job gets
    no key (and no legend line).
    """
    job_ids = sorted(
        {b.job_id for b in state.boards if b.job_id is not None and b.state in _KEYED_STATES}
    )
    return {job_id: JOB_KEYS[i] if i < len(JOB_KEYS) else "*" for i, job_id in enumerate(job_ids)}


def _style(board: BoardStatus, keys: dict[int, str]) -> _Style:
    is_job_state = board.state in _KEYED_STATES
    if is_job_state and board.job_id is not None and board.job_id in keys:
        index = list(keys).index(board.job_id)
        ansi = _ANSI_JOBS[index % len(_ANSI_JOBS)]
        if board.state is BoardState.POWERING:
            ansi = "\x1b[2m" + ansi
        return _Style(keys[board.job_id], ansi)
    char = _STATE_CHARS.get(board.state, "?")
    return _Style(char, _ANSI_STATE.get(board.state, ""))


def _cell(board: BoardStatus | None, keys: dict[int, str], is_colour: bool) -> str:
    if board is None:
        return " "
    style = _style(board, keys)
    return f"{style.ansi}{style.char}{_ANSI_RESET}" if is_colour and style.ansi else style.char


def render_text(state: MachineState, *, is_colour: bool = True) -> str:
    """Return the map as terminal text: summary, physical view, logical view, legend.

    Args:
        state: the snapshot to draw.
        is_colour: use ANSI colours (turn off for files, pipes and `NO_COLOR`).
    """
    keys = job_keys(state)
    counts = {s: 0 for s in BoardState}
    for board in state.boards:
        counts[board.state] += 1
    lines = [
        f"machine {state.name}: {state.width} x {state.height} triads, "
        f"{len(state.boards)} boards{' (draining)' if state.is_draining else ''}",
        "  " + ", ".join(f"{n} {s.value.replace('_', ' ')}" for s, n in counts.items() if n),
        "",
        "physical (cabinet, frame; board slots left to right):",
    ]
    lines += _physical_lines(state.boards, keys, is_colour)
    lines += ["", "logical (triad x across, y up; each triad z = 0, 1, 2):"]
    lines += _logical_lines(state, keys, is_colour)
    lines += ["", "legend: . free  ~ cooling down  X dead  # out of service  (dim: powering)"]
    jobs = {j.job_id: j for j in state.jobs}
    for job_id, key in keys.items():
        job = jobs.get(job_id)
        detail = f"owner {job.owner}, {job.n_boards} boards" if job is not None else ""
        lines.append(f"  {key}  job {job_id}  {detail}".rstrip())
    lines += _link_lines(state.links_out)
    return "\n".join(lines) + "\n"


_LINK_NAMES: Final = ("E", "NE", "N", "W", "SW", "S")  # by `Link` number


def _link_name(link: int) -> str:
    return _LINK_NAMES[link] if 0 <= link < len(_LINK_NAMES) else str(link)


def link_label(link: LinkOut) -> str:
    """One link that is out, as the map lists it: "(1, 0, 2) NE dead"."""
    where = f"({link.x}, {link.y}, {link.z}) {_link_name(link.link)}"
    if link.is_dead:
        return f"{where} dead"
    return f"{where} out of service" + (f": {link.reason}" if link.reason else "")


def _link_lines(links: Iterable[LinkOut]) -> list[str]:
    listed = [f"  {link_label(link)}" for link in links]
    if not listed:
        return []
    return ["", f"links out ({len(listed)}):", *listed]


def _physical_lines(
    boards: Iterable[BoardStatus], keys: dict[int, str], is_colour: bool
) -> list[str]:
    slots: dict[tuple[int, int], dict[int, BoardStatus]] = {}
    for board in boards:
        if board.cabinet is not None and board.frame is not None and board.board is not None:
            slots.setdefault((board.cabinet, board.frame), {})[board.board] = board
    if not slots:
        return ["  (no physical locations known)"]
    n_slots = 1 + max(slot for frame in slots.values() for slot in frame)
    header = "".join(str(slot % 10) for slot in range(n_slots))
    lines = [f"        {header}"]
    for (cabinet, frame), by_slot in sorted(slots.items()):
        cells = "".join(_cell(by_slot.get(slot), keys, is_colour) for slot in range(n_slots))
        lines.append(f"  c{cabinet:<2}f{frame:<2}{cells}")
    return lines


def _logical_lines(state: MachineState, keys: dict[int, str], is_colour: bool) -> list[str]:
    grid = {(b.x, b.y, b.z): b for b in state.boards}
    header = " ".join(f"{x:<3}" for x in range(state.width))
    lines = [f"       {header}".rstrip()]
    for y in reversed(range(state.height)):
        triads = (
            "".join(_cell(grid.get((x, y, z)), keys, is_colour) for z in range(3))
            for x in range(state.width)
        )
        lines.append(f"  y{y:<3} " + " ".join(triads))
    return lines


# --- PNG -------------------------------------------------------------------------------------

_SLOT_W: Final = 7
_SLOT_H: Final = 34
_FRAME_GAP: Final = 6
_CABINET_GAP: Final = 14
_TRIAD: Final = 27
_MARGIN: Final = 16
_TEXT_H: Final = 14


def _fill(board: BoardStatus, keys: dict[int, str]) -> _RGB:
    if board.state in _KEYED_STATES and board.job_id in keys:
        rgb = _PNG_JOBS[list(keys).index(board.job_id) % len(_PNG_JOBS)]
        if board.state is BoardState.POWERING:
            rgb = (rgb[0] // 2 + 127, rgb[1] // 2 + 127, rgb[2] // 2 + 127)
        return rgb
    return _PNG_STATE.get(board.state, (128, 128, 128))


def _box(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], board: BoardStatus,
         keys: dict[int, str]) -> None:  # fmt: skip
    draw.rectangle(box, fill=_fill(board, keys), outline=_INK)
    if board.state in (BoardState.DEAD, BoardState.OUT_OF_SERVICE):
        x0, y0, x1, y1 = box
        draw.line((x0, y0, x1, y1), fill=_MARK, width=2)
        draw.line((x0, y1, x1, y0), fill=_MARK, width=2)


def render_png(state: MachineState) -> bytes:
    """Return the map as a PNG image: racks on top, the logical grid and legend below.

    Dead and out-of-service boards are crossed in red; each job has its own colour.
    """
    keys = job_keys(state)
    font = ImageFont.load_default()
    located = [
        (b, b.cabinet, b.frame, b.board)
        for b in state.boards
        if b.cabinet is not None and b.frame is not None and b.board is not None
    ]
    cabinets = sorted({cabinet for _, cabinet, _, _ in located})
    frames = sorted({frame for _, _, frame, _ in located})
    n_slots = 1 + max((slot for _, _, _, slot in located), default=-1)
    cabinet_w = n_slots * _SLOT_W + _CABINET_GAP
    rack_h = _TEXT_H + len(frames) * (_SLOT_H + _FRAME_GAP) if located else 0
    grid_w = state.width * _TRIAD
    grid_h = state.height * _TRIAD
    legend_w = 260
    width = 2 * _MARGIN + max(len(cabinets) * cabinet_w + 30, grid_w + 40 + legend_w)
    links_h = (len(state.links_out) + 1) * _TEXT_H if state.links_out else 0
    height = 3 * _MARGIN + _TEXT_H + rack_h + _TEXT_H + grid_h + 2 * _TEXT_H + links_h
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draining = " (draining)" if state.is_draining else ""
    draw.text((_MARGIN, _MARGIN // 2), f"machine {state.name}{draining}", fill=_INK, font=font)

    top = _MARGIN + _TEXT_H
    for ci, cabinet in enumerate(cabinets):
        x0 = _MARGIN + 30 + ci * cabinet_w
        draw.text((x0, top), f"cabinet {cabinet}", fill=_INK, font=font)
    for fi, frame in enumerate(frames):
        y0 = top + _TEXT_H + fi * (_SLOT_H + _FRAME_GAP)
        draw.text((_MARGIN, y0 + _SLOT_H // 2 - 5), f"f{frame}", fill=_INK, font=font)
    for board, cabinet, frame, slot in located:
        x0 = _MARGIN + 30 + cabinets.index(cabinet) * cabinet_w + slot * _SLOT_W
        y0 = top + _TEXT_H + frames.index(frame) * (_SLOT_H + _FRAME_GAP)
        _box(draw, (x0, y0, x0 + _SLOT_W - 1, y0 + _SLOT_H), board, keys)

    grid_top = top + rack_h + _MARGIN + _TEXT_H
    grid_left = _MARGIN + 30
    draw.text((grid_left, grid_top - _TEXT_H), "logical: triad (x, y), boards z = 0, 1, 2",
              fill=_INK, font=font)  # fmt: skip
    third = _TRIAD // 3
    for board in state.boards:
        x0 = grid_left + board.x * _TRIAD + board.z * third
        y0 = grid_top + (state.height - 1 - board.y) * _TRIAD
        _box(draw, (x0, y0 + 1, x0 + third - 1, y0 + _TRIAD - 2), board, keys)
    for y in range(0, state.height, max(1, state.height // 10)):
        y0 = grid_top + (state.height - 1 - y) * _TRIAD + _TRIAD // 2 - 5
        draw.text((_MARGIN, y0), f"y{y}", fill=_INK, font=font)
    for x in range(0, state.width, max(1, state.width // 10)):
        x0 = grid_left + x * _TRIAD
        draw.text((x0, grid_top + grid_h + 2), f"x{x}", fill=_INK, font=font)
    for link in state.links_out:
        x0 = grid_left + link.x * _TRIAD + link.z * third
        y0 = grid_top + (state.height - 1 - link.y) * _TRIAD
        _link_tick(draw, (x0, y0 + 1, x0 + third - 1, y0 + _TRIAD - 2), link)

    _legend(draw, font, (grid_left + grid_w + 40, grid_top), state, keys)
    _links_legend(draw, font, (_MARGIN, grid_top + grid_h + 2 + _TEXT_H), state.links_out)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _legend(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    origin: tuple[int, int],
    state: MachineState,
    keys: dict[int, str],
) -> None:
    x0, y = origin
    samples = [(BoardStatus(x=0, y=0, z=0, state=s), s.value.replace("_", " ")) for s in _PNG_STATE]
    jobs = {j.job_id: j for j in state.jobs}
    for job_id in list(keys)[: len(_PNG_JOBS)]:
        owner = f" ({jobs[job_id].owner})" if job_id in jobs else ""
        sample = BoardStatus(x=0, y=0, z=0, state=BoardState.ALLOCATED, job_id=job_id)
        samples.append((sample, f"job {job_id}{owner}"))
    if len(keys) > len(_PNG_JOBS):
        samples.append((BoardStatus(x=0, y=0, z=0, state=BoardState.ALLOCATED), "colours repeat"))
    for board, label in samples:
        _box(draw, (x0, y, x0 + 12, y + 12), board, keys)
        draw.text((x0 + 20, y), label, fill=_INK, font=font)
        y += 18


_LINK_MARK: Final = (230, 0, 0)
_LINK_OUT_MARK: Final = (255, 140, 0)


def _link_tick(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], link: LinkOut) -> None:
    """A thick line on the side of a board's box that faces the link's direction."""
    x0, y0, x1, y1 = box
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    ends = {  # by direction name, as `_LINK_NAMES` has them
        "E": (x1, y0 + 2, x1, y1 - 2),
        "W": (x0, y0 + 2, x0, y1 - 2),
        "N": (x0 + 1, y0, x1 - 1, y0),
        "S": (x0 + 1, y1, x1 - 1, y1),
        "NE": (xm, y0, x1, ym),
        "SW": (x0, ym, xm, y1),
    }
    line = ends.get(_link_name(link.link))
    if line is not None:
        colour = _LINK_MARK if link.is_dead else _LINK_OUT_MARK
        draw.line(line, fill=colour, width=3)


def _links_legend(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    origin: tuple[int, int],
    links: tuple[LinkOut, ...],
) -> None:
    if not links:
        return
    x0, y = origin
    draw.text((x0, y), f"links out ({len(links)}): red dead, orange out of service",
              fill=_INK, font=font)  # fmt: skip
    for link in links:
        y += _TEXT_H
        colour = _LINK_MARK if link.is_dead else _LINK_OUT_MARK
        draw.text((x0 + 10, y), link_label(link), fill=colour, font=font)
