"""Read-only views of the state for the map, the metrics and the events."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from allocator.jobs import JobRecord, JobState
from allocator.machine import Machine
from allocator.service.core import ServiceCore
from allocator.store import BoardStatus as StoredBoardStatus
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


class StateViews(ServiceCore):
    """Board, job and machine views; O(boards) ones are for the map and reporting only."""

    # --- reading the state (map, metrics, events) ----------------------------------------

    def is_draining(self, machine_name: str) -> bool:
        """Whether an operator drained the machine (it allocates nothing new)."""
        return machine_name in self._draining

    def job_record(self, job_id: int) -> JobRecord | None:
        """The record of a live or remembered job, or None."""
        job = self._live.get(job_id)
        return job.record if job is not None else self._retired.get(job_id)

    def job_counts(self) -> dict[str, int]:
        """Live jobs by state name (`queued`, `power`, `ready`)."""
        counts = Counter(job.record.state.name.lower() for job in self._live.values())
        return dict(counts)

    def board_state(self, machine_name: str, board: BoardXYZ) -> tuple[BoardState, int | None]:
        """What one board is doing and the job (live or retired) that holds it."""
        machine = self._machines[machine_name]
        if not machine.is_live(board):
            return BoardState.DEAD, None
        holder = self._allocators[machine_name].holder(board)
        if holder is None:
            status = self._board_status.get((machine_name, board))
            if status is not None and not status.in_service:
                return BoardState.OUT_OF_SERVICE, None
            return BoardState.FREE, None
        return self._held_state(holder), holder

    def _held_state(self, holder: int) -> BoardState:
        """The state of a board that job `holder` (live, or retired and cooling) holds."""
        job = self._live.get(holder)
        if job is not None:
            is_ready = job.record.state is JobState.READY
            return BoardState.ALLOCATED if is_ready else BoardState.POWERING
        if holder in self._powering_off:
            return BoardState.POWERING
        return BoardState.COOLING_DOWN

    def board_views(self, machine_name: str) -> dict[BoardXYZ, BoardView] | None:
        """Every board's (state, job id, out-of-service reason); None for an unknown machine.

        What `machine_state` says of each board, without building its models: the reporter
        walks the machines up to twice a second, and on the 1,200-board machine the walk
        through `machine_state` paused the event loop for 4.7 ms, this one for 0.45 ms.
        """
        machine = self._machines.get(machine_name)
        if machine is None:
            return None
        out_of_service = {  # board -> the reason given, if any
            board: status.reason
            for (name, board), status in self._board_status.items()
            if name == machine_name and not status.in_service
        }
        holders = self._allocators[machine_name].holders
        live = machine.live_boards
        views: dict[BoardXYZ, BoardView] = {}
        for board in _all_boards(machine.width_triads, machine.height_triads):
            reason = out_of_service.get(board) if out_of_service else None
            if board not in live:
                views[board] = (BoardState.DEAD, None, reason)
                continue
            holder = holders.get(board)
            if holder is None:
                is_out = bool(out_of_service) and board in out_of_service
                views[board] = (
                    BoardState.OUT_OF_SERVICE if is_out else BoardState.FREE,
                    None,
                    reason,
                )
            else:
                views[board] = (self._held_state(holder), holder, reason)
        return views

    def board_status(self, machine_name: str, board: BoardXYZ) -> a.BoardStatus:
        """One board as `machine_state` lists it (the machine must exist)."""
        machine = self._machines[machine_name]
        status = self._board_status.get((machine_name, board))
        dead_links = sum(1 for dead, _ in machine.dead_links if dead == board) + sum(
            1
            for (name, linked, _), link_status in self._link_status.items()
            if name == machine_name and linked == board and not link_status.in_service
        )
        return self._status_of(machine, board, status, dead_links)

    def n_allocated_jobs(self, machine_name: str) -> int:
        """How many live jobs hold boards of the machine."""
        return sum(
            1
            for job in self._live.values()
            if job.record.machine_name == machine_name and job.record.is_allocated
        )

    def _status_of(
        self, machine: Machine, board: BoardXYZ, status: StoredBoardStatus | None, dead_links: int
    ) -> a.BoardStatus:
        state, job_id = self.board_state(machine.name, board)
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
                "reason": None if status is None or status.in_service else status.reason,
                "n_dead_links": dead_links,
            }
        )

    def machine_state(self, machine_name: str) -> a.MachineState | None:
        """Every board of a machine with its state and job; None for an unknown machine.

        O(boards): for the map and the operators' commands, never per request.
        """
        machine = self._machines.get(machine_name)
        if machine is None:
            return None
        dead_links = Counter(board for board, _ in machine.dead_links)
        for (name, board, _), link_status in self._link_status.items():
            if name == machine_name and not link_status.in_service:
                dead_links[board] += 1
        boards = [
            self._status_of(
                machine,
                board,
                self._board_status.get((machine_name, board)),
                dead_links.get(board, 0),
            )
            for board in _all_boards(machine.width_triads, machine.height_triads)
        ]
        jobs = [
            a.JobOnMachine(
                job_id=job.record.job_id,
                owner=job.record.owner,
                n_boards=len(job.record.boards),
                state=int(job.record.state),
            )
            for job in self._live.values()
            if job.record.machine_name == machine_name and job.record.is_allocated
        ]
        return a.MachineState(
            name=machine.name,
            width=machine.width_triads,
            height=machine.height_triads,
            is_draining=machine.name in self._draining,
            boards=tuple(boards),
            jobs=tuple(sorted(jobs, key=lambda j: j.job_id)),
            links_out=self._links_out(machine),
        )

    def _links_out(self, machine: Machine) -> tuple[a.LinkOut, ...]:
        """The machine's dead links, then those an operator took out (each link once)."""
        out: dict[tuple[BoardXYZ, Link], a.LinkOut] = {}
        for board, link in sorted(machine.dead_links):
            out[(board, link)] = a.LinkOut(x=board.x, y=board.y, z=board.z, link=int(link),
                                           is_dead=True)  # fmt: skip
        for (name, board, link), status in sorted(self._link_status.items()):
            if name == machine.name and not status.in_service and (board, link) not in out:
                out[(board, link)] = a.LinkOut(x=board.x, y=board.y, z=board.z, link=int(link),
                                               is_dead=False, reason=status.reason)  # fmt: skip
        return tuple(out.values())
