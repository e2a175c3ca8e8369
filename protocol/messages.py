"""Pydantic models of every spalloc v1 message: envelope, command arguments, structured replies.

A request line is `{"command": name, "args": [...], "kwargs": {...}}`; the server answers each
one, in order, with `{"return": value}` or `{"exception": message}`, and may push
`{"jobs_changed": [...]}` / `{"machines_changed": [...]}` notifications in between::

    client                                   server
      | {"command": "get_job_state", ...}  ->  |
      |  <- {"jobs_changed": [7]}              |   notification (any time)
      |  <- {"return": {"state": 3, ...}}      |   reply (FIFO)

Argument models are what `protocol.commands.bind` produces: one class per command, so a
dispatcher can match on the type. Reply models serialise (`model_dump(mode="json",
by_alias=True)`) to exactly the keys the reference server sends. Coordinates are named
tuples and go on the wire as JSON arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AllotmentVersionArgs",
    "AllotmentVersionReply",
    "CreateJobArgs",
    "DestroyJobArgs",
    "ExceptionReply",
    "GetBoardAtPositionArgs",
    "GetBoardPositionArgs",
    "GetJobMachineInfoArgs",
    "GetJobStateArgs",
    "JobIdArgs",
    "JobKeepaliveArgs",
    "JobListEntry",
    "JobMachineInfoReply",
    "JobStateReply",
    "JobsChanged",
    "ListJobsArgs",
    "ListMachinesArgs",
    "MachineListEntry",
    "MachinesChanged",
    "NoNotifyJobArgs",
    "NoNotifyMachineArgs",
    "Notification",
    "NotifyJobArgs",
    "NotifyMachineArgs",
    "PowerOffJobBoardsArgs",
    "PowerOnJobBoardsArgs",
    "Request",
    "ReturnReply",
    "ServerMessage",
    "VersionArgs",
    "WhereIsArgs",
    "WhereIsBoardArgs",
    "WhereIsChipArgs",
    "WhereIsJobChipArgs",
    "WhereIsPhysicalArgs",
    "WhereIsReply",
    "WireBoardCFB",
    "WireBoardXYZ",
    "WireChipXY",
    "WireConnection",
    "WireDeadLink",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- coordinates as they travel ------------------------------------------------------------


class WireChipXY(NamedTuple):
    """A chip coordinate, `[x, y]` on the wire."""

    x: int
    y: int


class WireBoardXYZ(NamedTuple):
    """A logical board coordinate (triad x, y and board z in 0..2), `[x, y, z]` on the wire."""

    x: int
    y: int
    z: int


class WireBoardCFB(NamedTuple):
    """A physical board slot, `[cabinet, frame, board]` on the wire."""

    cabinet: int
    frame: int
    board: int


class WireDeadLink(NamedTuple):
    """A dead link leaving board (x, y, z) in direction `link` (0..5 = E, NE, N, W, SW, S)."""

    x: int
    y: int
    z: int
    link: int


class WireConnection(NamedTuple):
    """One board's Ethernet chip (relative to the job's origin) and hostname.

    On the wire: `[[x, y], "hostname"]`.
    """

    chip: WireChipXY
    hostname: str


# --- envelope ------------------------------------------------------------------------------


class Request(_Frozen):
    """One request line; `args`/`kwargs` are raw JSON values until `bind` checks them."""

    command: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ReturnReply(_Frozen):
    """A successful reply: `{"return": value}` (`value` may be null)."""

    value: Any = Field(alias="return")


class ExceptionReply(_Frozen):
    """A failed command: `{"exception": message}`; the connection stays open."""

    exception: str


class JobsChanged(_Frozen):
    """Notification: these watched jobs changed state."""

    jobs_changed: tuple[int, ...]


class MachinesChanged(_Frozen):
    """Notification: these watched machines changed."""

    machines_changed: tuple[str, ...]


Notification = JobsChanged | MachinesChanged
"""Any unsolicited message from the server."""

ServerMessage = ReturnReply | ExceptionReply | JobsChanged | MachinesChanged
"""Anything the server may send on a connection."""


# --- command arguments ---------------------------------------------------------------------


class VersionArgs(_Frozen):
    """`version()`: the v1 version string."""


class ListJobsArgs(_Frozen):
    """`list_jobs()`: live jobs in creation order."""


class ListMachinesArgs(_Frozen):
    """`list_machines()`: machines in priority order."""


class AllotmentVersionArgs(_Frozen):
    """`allotment_version()` (extension): the server's own version."""


class JobIdArgs(_Frozen):
    """Arguments of a command about one job.

    `job_id` is None when the client sent something that is not an integer id (a string, a
    float with a fraction, an out-of-range number): the reference treats those as "no such
    job", and so should the service.
    """

    job_id: int | None


class JobKeepaliveArgs(JobIdArgs):
    """`job_keepalive(job_id)`."""


class GetJobStateArgs(JobIdArgs):
    """`get_job_state(job_id)`."""


class GetJobMachineInfoArgs(JobIdArgs):
    """`get_job_machine_info(job_id)`."""


class PowerOnJobBoardsArgs(JobIdArgs):
    """`power_on_job_boards(job_id)` (also a reset)."""


class PowerOffJobBoardsArgs(JobIdArgs):
    """`power_off_job_boards(job_id)`."""


class DestroyJobArgs(JobIdArgs):
    """`destroy_job(job_id, reason=None)`."""

    reason: str | None = None


class NotifyJobArgs(_Frozen):
    """`notify_job(job_id=None)`: watch one job, or all jobs when `job_id` is None."""

    job_id: int | None = None


class NoNotifyJobArgs(NotifyJobArgs):
    """`no_notify_job(job_id=None)`: stop watching one job, or everything when None."""


class NotifyMachineArgs(_Frozen):
    """`notify_machine(machine_name=None)`: watch one machine, or all when None."""

    machine_name: str | None = None


class NoNotifyMachineArgs(NotifyMachineArgs):
    """`no_notify_machine(machine_name=None)`."""


class CreateJobArgs(_Frozen):
    """`create_job(*args, owner, keepalive=60.0, machine=None, tags=None, ...)`.

    `args` are the positional integers as sent (0 to 4). The first three are the request
    form, `dims`: `()` one board, `(n)` at least n boards, `(w, h)` a w x h rectangle of
    triads, `(x, y, z)` that board. A fourth lands in `max_dead_boards`, which then already
    holds it. `keepalive_s` None means the job never expires.
    """

    args: tuple[int, ...] = ()
    owner: str
    keepalive_s: float | None = 60.0
    machine: str | None = None
    tags: tuple[str, ...] | None = None
    min_ratio: float = 0.0
    max_dead_boards: int | None = None
    max_dead_links: int | None = None
    require_torus: bool = False

    @property
    def dims(self) -> tuple[int, ...]:
        """The request form: 0 to 3 integers."""
        return self.args[:3]

    def listed_kwargs(self) -> dict[str, Any]:
        """The `kwargs` shown for this job by `list_jobs` (every option but owner/keepalive)."""
        return {
            "machine": self.machine,
            "tags": None if self.tags is None else list(self.tags),
            "min_ratio": self.min_ratio,
            "max_dead_boards": self.max_dead_boards,
            "max_dead_links": self.max_dead_links,
            "require_torus": self.require_torus,
        }


class GetBoardPositionArgs(_Frozen):
    """`get_board_position(machine_name, x, y, z)`: logical -> physical."""

    machine_name: str
    x: int
    y: int
    z: int


class GetBoardAtPositionArgs(_Frozen):
    """`get_board_at_position(machine_name, cabinet, frame, board)`: physical -> logical."""

    machine_name: str
    cabinet: int
    frame: int
    board: int


class WhereIsBoardArgs(_Frozen):
    """`where_is(machine=, x=, y=, z=)`: a logical board."""

    machine: str
    x: int
    y: int
    z: int


class WhereIsPhysicalArgs(_Frozen):
    """`where_is(machine=, cabinet=, frame=, board=)`: a physical board."""

    machine: str
    cabinet: int
    frame: int
    board: int


class WhereIsChipArgs(_Frozen):
    """`where_is(machine=, chip_x=, chip_y=)`: a chip of the whole machine."""

    machine: str
    chip_x: int
    chip_y: int


class WhereIsJobChipArgs(_Frozen):
    """`where_is(job_id=, chip_x=, chip_y=)`: a chip relative to a job's origin.

    `job_id` is None when it was not an integer (no such job: the answer is null).
    """

    job_id: int | None
    chip_x: int
    chip_y: int


WhereIsArgs = WhereIsBoardArgs | WhereIsPhysicalArgs | WhereIsChipArgs | WhereIsJobChipArgs
"""The four forms of `where_is`."""


# --- structured replies --------------------------------------------------------------------


class JobStateReply(_Frozen):
    """Reply of `get_job_state`.

    `state` is 0 unknown, 1 queued, 2 power, 3 ready, 4 destroyed; for unknown and destroyed
    jobs every other field but `reason` is null.
    """

    state: int
    power: bool | None
    keepalive_s: float | None = Field(alias="keepalive")
    reason: str | None
    start_time: float | None
    keepalivehost: str | None


class JobMachineInfoReply(_Frozen):
    """Reply of `get_job_machine_info`; every field is null until boards are allocated.

    `width`/`height` are in chips; `connections` has one entry per board, its Ethernet chip
    relative to the job's origin board (so `[0, 0]` is always there).
    """

    width: int | None
    height: int | None
    connections: list[WireConnection] | None
    machine_name: str | None
    boards: list[WireBoardXYZ] | None


class JobListEntry(_Frozen):
    """One entry of `list_jobs`.

    `args` are the create_job positionals as sent, `kwargs` its options without owner and
    keepalive, `boards` null while queued, `keepalivehost` "" when unknown.
    """

    job_id: int
    owner: str
    start_time: float
    keepalive_s: float | None = Field(alias="keepalive")
    state: int
    power: bool | None
    args: list[int]
    kwargs: dict[str, Any]
    allocated_machine_name: str | None
    boards: list[WireBoardXYZ] | None
    keepalivehost: str


class MachineListEntry(_Frozen):
    """One entry of `list_machines`; `width`/`height` are in triads."""

    name: str
    tags: list[str]
    width: int
    height: int
    dead_boards: list[WireBoardXYZ]
    dead_links: list[WireDeadLink]


class WhereIsReply(_Frozen):
    """Reply of `where_is` when something is there (the reply is null otherwise).

    `chip` is in whole-machine chip coordinates, `board_chip` within the board, `job_chip`
    within the job using the board (null with `job_id` when no job uses it).
    """

    machine: str
    logical: WireBoardXYZ
    physical: WireBoardCFB
    chip: WireChipXY
    board_chip: WireChipXY
    job_id: int | None
    job_chip: WireChipXY | None


class AllotmentVersionReply(_Frozen):
    """Reply of the `allotment_version` extension command.

    `version` is the allotment package version (the v1 `version` command answers a string
    the spalloc clients accept instead); `protocol` numbers the extension command set.
    """

    server: str
    version: str
    protocol: int
