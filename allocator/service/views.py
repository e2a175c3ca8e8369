"""Read-only views of the state for the map, the metrics and the events."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from allocator.machine import Machine
from allocator.service.state import ServiceState
from allocator.store import LinkStatus
from machine_models.geometry import BoardCFB, BoardXYZ, Link
from protocol import admin as a
from protocol.commands import construct_plain, is_plain_model
from protocol.events import BoardState

__all__ = ["BoardView", "StateViews"]


_BOARD_STATUS_IS_PLAIN = is_plain_model(a.BoardStatus, set(a.BoardStatus.model_fields))

BoardView = tuple[BoardState, int | None, str | None]
"""A board's state, the job holding it and why it is out of service (`board_views`)."""


@functools.lru_cache(maxsize=16)
def _all_boards(width_triads: int, height_triads: int) -> tuple[BoardXYZ, ...]:
    """Every board position of a machine of that size, in the order the views list them."""
    return tuple(
        BoardXYZ(x, y, z)
        for x in range(width_triads)
        for y in range(height_triads)
        for z in range(3)
    )


def _board_status(fields: dict[str, Any]) -> a.BoardStatus:
    # 1,200 of these per machine walk: the plain construction halves the walk.
    if _BOARD_STATUS_IS_PLAIN:
        return construct_plain(a.BoardStatus, fields)
    return a.BoardStatus.model_construct(**fields)


class StateViews:
    """Board, job and machine views; O(boards) ones are for the map and reporting only.

    Every board's state is decided in one place, `_board_view`: the fast walk
    (`board_views`, for the reporter) and the models (`machine_state`, `board_status`)
    both go through it.
    """

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def _held_state(self, holder: int) -> BoardState:
        """The state of a board that job `holder` (live, or retired and cooling) holds."""
        is_ready = self._state.is_job_ready(holder)
        if is_ready is not None:
            return BoardState.ALLOCATED if is_ready else BoardState.POWERING
        if self._state.is_powering_off(holder):
            return BoardState.POWERING
        return BoardState.COOLING_DOWN

    def _board_view(
        self,
        board: BoardXYZ,
        live: AbstractSet[BoardXYZ],
        holders: Mapping[BoardXYZ, int],
        out_of_service: Mapping[BoardXYZ, str | None],
    ) -> BoardView:
        """One board's (state, job id, out-of-service reason)."""
        reason = out_of_service.get(board) if out_of_service else None
        if board not in live:
            return (BoardState.DEAD, None, reason)
        holder = holders.get(board)
        if holder is not None:
            return (self._held_state(holder), holder, reason)
        is_out = bool(out_of_service) and board in out_of_service
        return (BoardState.OUT_OF_SERVICE if is_out else BoardState.FREE, None, reason)

    def _out_of_service(self, machine_name: str) -> dict[BoardXYZ, str | None]:
        """Board -> the reason given, for the boards an operator took out."""
        return {
            board: status.reason
            for board, status in self._state.board_service(machine_name).items()
            if not status.in_service
        }

    def board_state(self, machine_name: str, board: BoardXYZ) -> tuple[BoardState, int | None]:
        """What one board is doing and the job (live or retired) that holds it."""
        machine = self._state.machine(machine_name)
        assert machine is not None, machine_name
        state, job_id, _ = self._board_view(
            board,
            machine.live_boards,
            self._state.board_holders(machine_name),
            self._out_of_service(machine_name),
        )
        return state, job_id

    def board_views(self, machine_name: str) -> dict[BoardXYZ, BoardView] | None:
        """Every board's (state, job id, out-of-service reason); None for an unknown machine.

        What `machine_state` says of each board, without building its models: the reporter
        walks the machines up to twice a second.
        """
        machine = self._state.machine(machine_name)
        if machine is None:
            return None
        out_of_service = self._out_of_service(machine_name)
        holders = self._state.board_holders(machine_name)
        live = machine.live_boards
        view = self._board_view
        return {
            board: view(board, live, holders, out_of_service)
            for board in _all_boards(machine.width_triads, machine.height_triads)
        }

    def board_status(self, machine_name: str, board: BoardXYZ) -> a.BoardStatus:
        """One board as `machine_state` lists it (the machine must exist)."""
        machine = self._state.machine(machine_name)
        assert machine is not None, machine_name
        dead_links = sum(1 for dead, _ in machine.dead_links if dead == board) + sum(
            1
            for (linked, _), status in self._state.link_service(machine_name).items()
            if linked == board and not status.in_service
        )
        view = self._board_view(
            board,
            machine.live_boards,
            self._state.board_holders(machine_name),
            self._out_of_service(machine_name),
        )
        return _status_of(machine, board, view, dead_links)

    def n_allocated_jobs(self, machine_name: str) -> int:
        """How many live jobs hold boards of the machine."""
        return sum(
            1
            for record in self._state.live_jobs()
            if record.machine_name == machine_name and record.is_allocated
        )

    def machine_state(self, machine_name: str) -> a.MachineState | None:
        """Every board of a machine with its state and job; None for an unknown machine.

        O(boards): for the map and the operators' commands, never per request.
        """
        state = self._state
        machine = state.machine(machine_name)
        if machine is None:
            return None
        links = state.link_service(machine_name)
        dead_links = Counter(board for board, _ in machine.dead_links)
        for (board, _), status in links.items():
            if not status.in_service:
                dead_links[board] += 1
        views = self.board_views(machine_name)
        assert views is not None
        boards = [
            _status_of(machine, board, view, dead_links.get(board, 0))
            for board, view in views.items()
        ]
        jobs = [
            a.JobOnMachine(
                job_id=record.job_id,
                owner=record.owner,
                n_boards=len(record.boards),
                state=int(record.state),
            )
            for record in state.live_jobs()
            if record.machine_name == machine_name and record.is_allocated
        ]
        return a.MachineState(
            name=machine.name,
            width=machine.width_triads,
            height=machine.height_triads,
            is_draining=state.is_draining(machine.name),
            boards=tuple(boards),
            jobs=tuple(sorted(jobs, key=lambda j: j.job_id)),
            links_out=_links_out(machine, links),
        )


def _status_of(
    machine: Machine, board: BoardXYZ, view: BoardView, dead_links: int
) -> a.BoardStatus:
    state, job_id, reason = view
    cfb: BoardCFB | None = machine.physical(board)
    return _board_status(
        {
            "x": board.x,
            "y": board.y,
            "z": board.z,
            "cabinet": None if cfb is None else cfb.cabinet,
            "frame": None if cfb is None else cfb.frame,
            "board": None if cfb is None else cfb.board,
            "state": state,
            "job_id": job_id,
            "reason": reason,
            "n_dead_links": dead_links,
        }
    )


def _links_out(
    machine: Machine, links: Mapping[tuple[BoardXYZ, Link], LinkStatus]
) -> tuple[a.LinkOut, ...]:
    """The machine's dead links, then those an operator took out (each link once)."""
    out: dict[tuple[BoardXYZ, Link], a.LinkOut] = {}
    for board, link in sorted(machine.dead_links):
        out[(board, link)] = a.LinkOut(x=board.x, y=board.y, z=board.z, link=int(link),
                                       is_dead=True)  # fmt: skip
    for (board, link), status in sorted(links.items()):
        if not status.in_service and (board, link) not in out:
            out[(board, link)] = a.LinkOut(x=board.x, y=board.y, z=board.z, link=int(link),
                                           is_dead=False, reason=status.reason)  # fmt: skip
    return tuple(out.values())
