"""Job records, job states, the legal transitions between them and keepalive deadlines.

Pure and synchronous: no I/O and no clock of its own; every time comes in as a parameter.
A `JobRecord` is immutable; each transition helper takes a record and returns a new one, or
raises `JobTransitionError` when the transition is not legal from the record's state::

    create --> QUEUED --allocate--> POWER --power_done--> READY
                 |                    ^                     |
                 |                    +----set_power--------+   (set_power also POWER -> POWER)
                 |                    |
                 +--------------------+--destroy / expire / cancel--> DESTROYED

A job allocated at creation goes straight from QUEUED to POWER in the same step, so a client
never sees it queued. The reason strings are the wire strings of the spalloc protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from allocator.errors import AllocatorError, RequestError
from machine_models.geometry import BoardXYZ

__all__ = [
    "CANCELLED_PREFIX",
    "REASON_JOB_TIMED_OUT",
    "REASON_MACHINE_REMOVED",
    "REASON_NO_SUITABLE_MACHINES",
    "REASON_QUEUED_JOB_TIMED_OUT",
    "JobRecord",
    "JobState",
    "JobTransitionError",
    "allocate",
    "bmp_failure_reason",
    "cancel",
    "deadline",
    "destroy",
    "expire",
    "is_expired",
    "power_done",
    "set_power",
    "touch",
]

CANCELLED_PREFIX = "Cancelled: "
"""Prefix of the reason of every job destroyed before it got boards."""

REASON_NO_SUITABLE_MACHINES = "Cancelled: No suitable machines available."
"""The request can never be met on any candidate machine."""

REASON_JOB_TIMED_OUT = "Job timed out."
"""The keepalive expired while the job held boards."""

REASON_QUEUED_JOB_TIMED_OUT = "Cancelled: Job timed out."
"""The keepalive expired while the job was queued."""

REASON_MACHINE_REMOVED = "Machine removed."
"""The job's machine vanished or changed on a configuration reload."""


def bmp_failure_reason(bmp_address: str) -> str:
    """The reason recorded when a board controller request failed for good.

    Args:
        bmp_address: the address of the board controller (BMP) that failed.

    Returns:
        The wire reason string, e.g. "Machine configuration failed. Error: Requests failed
        on BMP 10.0.0.1".
    """
    return f"Machine configuration failed. Error: Requests failed on BMP {bmp_address}"


class JobState(IntEnum):
    """The state of a job; the values are the numbers sent on the wire."""

    UNKNOWN = 0
    QUEUED = 1
    POWER = 2
    READY = 3
    DESTROYED = 4


_ALLOCATED_STATES = frozenset({JobState.POWER, JobState.READY})
"""The states of a job holding boards (a set: looking enum members up is not free)."""


class JobTransitionError(AllocatorError):
    """A transition was asked of a job in a state that does not allow it.

    This is a bug in the caller: check the record's state before asking for the transition.
    """

    def __init__(self, job_id: int, state: JobState, action: str) -> None:
        self.job_id = job_id
        self.state = state
        self.action = action
        super().__init__(f"job {job_id} cannot {action} while {state.name.lower()}")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The durable, immutable description of one job.

    Attributes:
        job_id: the job's id, unique for the lifetime of the database.
        owner: the free-text owner given at creation.
        created_at: Unix time of creation, seconds.
        keepalive_s: the keepalive interval; None means the job never expires.
        args: the positional create_job arguments as sent.
        kwargs: the create_job keyword arguments minus owner and keepalive, JSON-able
            (tags as a list).
        state: the job's state (never UNKNOWN).
        power: whether the boards are (being) powered on; None while queued or destroyed.
        machine_name: the machine the job was allocated on; None until allocated.
        boards: the allocated boards, sorted; empty until allocated.
        width_chips: width of the allocated chip network; None until allocated.
        height_chips: height of the allocated chip network; None until allocated.
        reason: why the job was destroyed; None while live (and possibly after).
        destroyed_at: Unix time of destruction; None while live.
        keepalivehost: the address of the last client that touched the job.
    """

    job_id: int
    owner: str
    created_at: float
    keepalive_s: float | None
    args: tuple[int, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    state: JobState = JobState.QUEUED
    power: bool | None = None
    machine_name: str | None = None
    boards: tuple[BoardXYZ, ...] = ()
    width_chips: int | None = None
    height_chips: int | None = None
    reason: str | None = None
    destroyed_at: float | None = None
    keepalivehost: str | None = None

    def __post_init__(self) -> None:
        if self.state is JobState.UNKNOWN:
            raise RequestError(f"job {self.job_id} cannot be recorded in state unknown")
        if len(self.boards) > 1 and list(self.boards) != sorted(self.boards):
            raise RequestError(f"job {self.job_id} boards are not sorted")

    @property
    def is_live(self) -> bool:
        """Whether the job is queued, powering or ready."""
        return self.state is not JobState.DESTROYED

    @property
    def is_allocated(self) -> bool:
        """Whether the job currently holds boards (POWER or READY)."""
        return self.state in _ALLOCATED_STATES


def _moved(
    record: JobRecord,
    state: JobState,
    power: bool | None,
    reason: str | None,
    destroyed_at: float | None,
) -> JobRecord:
    """The record in a new state, every field but these four carried over.

    Spelled out rather than `dataclasses.replace`, which takes twice as long: the service
    moves every job through here two or three times.
    """
    return JobRecord(
        job_id=record.job_id,
        owner=record.owner,
        created_at=record.created_at,
        keepalive_s=record.keepalive_s,
        args=record.args,
        kwargs=record.kwargs,
        state=state,
        power=power,
        machine_name=record.machine_name,
        boards=record.boards,
        width_chips=record.width_chips,
        height_chips=record.height_chips,
        reason=reason,
        destroyed_at=destroyed_at,
        keepalivehost=record.keepalivehost,
    )


def _require(record: JobRecord, action: str, *allowed: JobState) -> None:
    if record.state not in allowed:
        raise JobTransitionError(record.job_id, record.state, action)


def allocate(
    record: JobRecord,
    machine_name: str,
    boards: Iterable[BoardXYZ],
    width_chips: int,
    height_chips: int,
) -> JobRecord:
    """Give a queued job its boards; the boards start powering on (QUEUED -> POWER).

    Args:
        record: a queued job.
        machine_name: the machine the boards belong to.
        boards: the allocated boards, in any order; at least one.
        width_chips: width of the allocated chip network.
        height_chips: height of the allocated chip network.

    Returns:
        The job in state POWER with power on.

    Raises:
        JobTransitionError: the job is not queued.
        RequestError: no boards were given.
    """
    _require(record, "be allocated", JobState.QUEUED)
    sorted_boards = tuple(sorted(BoardXYZ(*board) for board in boards))
    if not sorted_boards:
        raise RequestError(f"job {record.job_id} cannot be allocated zero boards")
    return dataclasses.replace(
        record,
        state=JobState.POWER,
        power=True,
        machine_name=machine_name,
        boards=sorted_boards,
        width_chips=width_chips,
        height_chips=height_chips,
    )


def power_done(record: JobRecord) -> JobRecord:
    """Mark that all the board controller work of a job has finished (POWER -> READY).

    Raises:
        JobTransitionError: the job is not in state POWER.
    """
    _require(record, "finish powering", JobState.POWER)
    return _moved(record, JobState.READY, record.power, record.reason, record.destroyed_at)


def set_power(record: JobRecord, is_on: bool) -> JobRecord:
    """Start powering an allocated job's boards on (or resetting them) or off.

    Allowed from READY and from POWER (a new request queues behind the one in flight).

    Args:
        record: an allocated job.
        is_on: True to power on (or reset), False to power off.

    Returns:
        The job in state POWER with the new power flag.

    Raises:
        JobTransitionError: the job is queued or destroyed.
    """
    _require(record, f"power {'on' if is_on else 'off'}", JobState.POWER, JobState.READY)
    return _moved(record, JobState.POWER, is_on, record.reason, record.destroyed_at)


def _destroyed(record: JobRecord, at: float, reason: str | None) -> JobRecord:
    return _moved(record, JobState.DESTROYED, None, reason, at)


def destroy(record: JobRecord, at: float, reason: str | None) -> JobRecord:
    """Destroy a live job at a client's request.

    The boards (if any) stay in the record so that the caller knows what to power off and
    free; the reason follows the spalloc rule: "Cancelled: <reason or ''>" for a queued job,
    the given reason (possibly None) for an allocated one.

    Args:
        record: a live job.
        at: Unix time of destruction.
        reason: the reason the client gave, or None.

    Raises:
        JobTransitionError: the job is already destroyed.
    """
    _require(record, "be destroyed", JobState.QUEUED, JobState.POWER, JobState.READY)
    if record.state is JobState.QUEUED:
        return _destroyed(record, at, CANCELLED_PREFIX + (reason or ""))
    return _destroyed(record, at, reason)


def expire(record: JobRecord, at: float) -> JobRecord:
    """Destroy a live job whose keepalive ran out.

    Raises:
        JobTransitionError: the job is already destroyed.
    """
    _require(record, "time out", JobState.QUEUED, JobState.POWER, JobState.READY)
    if record.state is JobState.QUEUED:
        return _destroyed(record, at, REASON_QUEUED_JOB_TIMED_OUT)
    return _destroyed(record, at, REASON_JOB_TIMED_OUT)


def cancel(record: JobRecord, at: float, reason: str) -> JobRecord:
    """Destroy a live job for a reason of the service's own, recorded verbatim.

    Use it with `REASON_NO_SUITABLE_MACHINES`, `REASON_MACHINE_REMOVED` or
    `bmp_failure_reason(...)`.

    Raises:
        JobTransitionError: the job is already destroyed.
    """
    _require(record, "be cancelled", JobState.QUEUED, JobState.POWER, JobState.READY)
    return _destroyed(record, at, reason)


def touch(record: JobRecord, keepalivehost: str | None) -> JobRecord:
    """Record the address of the client that last touched a job.

    Returns:
        The same record object when the address is unchanged, so that the caller can skip
        the write (`new is record`).
    """
    if keepalivehost == record.keepalivehost:
        return record
    return dataclasses.replace(record, keepalivehost=keepalivehost)


def deadline(last_touch: float, keepalive_s: float | None) -> float | None:
    """The Unix time at which a job expires; None means it never does.

    Args:
        last_touch: Unix time of the last keepalive touch (or of creation, or of the
            restart, which resets every timer).
        keepalive_s: the job's keepalive interval, or None.
    """
    if keepalive_s is None:
        return None
    return last_touch + keepalive_s


def is_expired(last_touch: float, keepalive_s: float | None, now: float) -> bool:
    """Whether a job touched at `last_touch` has expired by `now` (deadline reached)."""
    when = deadline(last_touch, keepalive_s)
    return when is not None and now >= when
