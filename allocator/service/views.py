"""Read-only views of the state for the map, the metrics and the events."""

from __future__ import annotations

from collections import Counter
from typing import Any

from allocator.jobs import JobRecord, JobState
from allocator.service.core import ServiceCore
from machine_models.geometry import BoardCFB, BoardXYZ
from protocol import admin as a
from protocol.commands import construct_plain, is_plain_model
from protocol.events import BoardState

__all__ = ["StateViews"]


_BOARD_STATUS_IS_PLAIN = is_plain_model(a.BoardStatus, set(a.BoardStatus.model_fields))


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
        job = self._live.get(holder)
        if job is not None:
            if job.record.state is JobState.READY:
                return BoardState.ALLOCATED, holder
            return BoardState.POWERING, holder
        if holder in self._powering_off:
            return BoardState.POWERING, holder
        return BoardState.COOLING_DOWN, holder

    def machine_state(self, machine_name: str) -> a.MachineState | None:
        """Every board of a machine with its state and job; None for an unknown machine.

        O(boards): for the map and the throttled reporting, never per request.
        """
        machine = self._machines.get(machine_name)
        if machine is None:
            return None
        dead_links = Counter(board for board, _ in machine.dead_links)
        for (name, board, _), link_status in self._link_status.items():
            if name == machine_name and not link_status.in_service:
                dead_links[board] += 1
        boards = []
        for x in range(machine.width_triads):
            for y in range(machine.height_triads):
                for z in range(3):
                    board = BoardXYZ(x, y, z)
                    state, job_id = self.board_state(machine_name, board)
                    cfb: BoardCFB | None = machine.physical(board)
                    status = self._board_status.get((machine_name, board))
                    boards.append(
                        _board_status(
                            {
                                "x": x,
                                "y": y,
                                "z": z,
                                "cabinet": None if cfb is None else cfb.cabinet,
                                "frame": None if cfb is None else cfb.frame,
                                "board": None if cfb is None else cfb.board,
                                "state": state,
                                "job_id": job_id,
                                "reason": None
                                if status is None or status.in_service
                                else status.reason,
                                "n_dead_links": dead_links.get(board, 0),
                            }
                        )
                    )
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
        )
