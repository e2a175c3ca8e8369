"""MQTT event payloads and the topic tree they are published under.

Every payload is a frozen pydantic model carrying `version` (the schema version, bumped on
any incompatible change) and `kind` (so a subscriber to `<prefix>/#` can tell them apart).
The tree, for a prefix `allotment` and a machine `spin5`::

    allotment/spin5/summary          MachineSummary, retained: the present state
    allotment/spin5/machine          MachineEvent: added, changed, removed, drained
    allotment/spin5/jobs/17          JobEvent: every state change of job 17
    allotment/spin5/jobs/17/run      RunEvent: job 17's runs (queued, progress, ended)
    allotment/spin5/boards/3/4/1     BoardEvent, retained: board (3, 4, 1)
    allotment/_queued/jobs/18        JobEvent of a job with no machine yet

Machine names are free text; `/`, `+` and `#` (which MQTT gives meaning to) are replaced by
`_` in topics, while the payload keeps the real name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "QUEUED_TOPIC_SEGMENT",
    "BoardEvent",
    "BoardState",
    "JobEvent",
    "MachineChange",
    "MachineEvent",
    "MachineSummary",
    "RunEvent",
    "board_topic",
    "job_topic",
    "machine_topic",
    "run_topic",
    "summary_topic",
    "topic_segment",
]

EVENT_SCHEMA_VERSION = 1
"""The schema version every payload carries; bumped on an incompatible change."""

QUEUED_TOPIC_SEGMENT = "_queued"
"""The machine segment of a job's topic while the job has no machine."""


class BoardState(StrEnum):
    """What a board is doing, as operators see it (metrics labels use the same values)."""

    FREE = "free"
    ALLOCATED = "allocated"
    POWERING = "powering"
    COOLING_DOWN = "cooling_down"
    DEAD = "dead"
    OUT_OF_SERVICE = "out_of_service"


class MachineChange(StrEnum):
    """What happened to a machine."""

    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"
    DRAINED = "drained"
    UNDRAINED = "undrained"


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = EVENT_SCHEMA_VERSION
    timestamp_s: float = Field(description="Unix time of the change, in seconds")


class JobEvent(_Payload):
    """A job changed state (created, queued, powering, ready, destroyed).

    `state` is the spalloc v1 state number (1 queued, 2 power, 3 ready, 4 destroyed).
    """

    kind: Literal["job"] = "job"
    job_id: int
    state: int = Field(ge=0, le=4)
    state_name: str
    owner: str
    machine: str | None = None
    power: bool | None = None
    n_boards: int = Field(default=0, ge=0)
    reason: str | None = None


class RunEvent(_Payload):
    """A job's run was queued, started, moved on, or ended (dispatch extension).

    `state` is one of `queued`, `running`, `done`, `failed`, `stopped`.
    """

    kind: Literal["run"] = "run"
    job_id: int
    machine: str | None = None
    run_id: int = Field(ge=1)
    state: str
    steps_done: int = Field(default=0, ge=0)
    steps_total: int = Field(default=0, ge=0)
    reason: str | None = None


class BoardEvent(_Payload):
    """A board changed state; `cabinet`/`frame`/`board` are its physical slot, if known."""

    kind: Literal["board"] = "board"
    machine: str
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    z: int = Field(ge=0, le=2)
    cabinet: int | None = None
    frame: int | None = None
    board: int | None = None
    state: BoardState
    job_id: int | None = None
    reason: str | None = None


class MachineEvent(_Payload):
    """A machine was added, changed, removed, drained or undrained."""

    kind: Literal["machine"] = "machine"
    machine: str
    change: MachineChange
    reason: str | None = None


class MachineSummary(_Payload):
    """The present state of one machine, published retained after every change.

    `n_boards_by_state` has every `BoardState` value as a key (zero included), so a
    dashboard can plot it without knowing which states occurred.
    """

    kind: Literal["summary"] = "summary"
    machine: str
    n_boards: int = Field(ge=0)
    n_boards_by_state: dict[BoardState, int]
    n_jobs: int = Field(ge=0)
    queue_length: int = Field(ge=0)
    is_draining: bool = False


def topic_segment(name: str) -> str:
    """Return `name` made safe for one MQTT topic level.

    Args:
        name: a machine name (free text).
    """
    safe = name.replace("/", "_").replace("+", "_").replace("#", "_")
    return safe or "_"


def summary_topic(prefix: str, machine: str) -> str:
    """Return the retained summary topic of `machine`."""
    return f"{prefix}/{topic_segment(machine)}/summary"


def machine_topic(prefix: str, machine: str) -> str:
    """Return the topic of `machine`'s change events."""
    return f"{prefix}/{topic_segment(machine)}/machine"


def job_topic(prefix: str, machine: str | None, job_id: int) -> str:
    """Return the topic of job `job_id`'s events (`_queued` while it has no machine)."""
    segment = QUEUED_TOPIC_SEGMENT if machine is None else topic_segment(machine)
    return f"{prefix}/{segment}/jobs/{job_id}"


def board_topic(prefix: str, machine: str, x: int, y: int, z: int) -> str:
    """Return the retained topic of board (x, y, z) of `machine`."""
    return f"{prefix}/{topic_segment(machine)}/boards/{x}/{y}/{z}"


def run_topic(prefix: str, machine: str | None, job_id: int) -> str:
    """Return the topic of job `job_id`'s run events."""
    return f"{job_topic(prefix, machine, job_id)}/run"
