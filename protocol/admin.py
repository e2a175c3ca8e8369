"""Operator extension commands: take boards and links out of service, drain, destroy, audit.

Same envelope as v1 (`{"command": ..., "args": [...], "kwargs": {...}}`), new names, all
starting `admin_`. Every command that changes something takes the operator `token` first
(it must equal `[server] operator_token` of the configuration), a `reason`, and optionally the
`operator` (who is acting, free text; the server adds the peer address). Each such command
answers with the `AuditEntry` it recorded. `admin_machine_state` only reads, so its token is
optional::

    {"command": "admin_set_board_service",
     "args": ["s3cret", "spin5", 3, 4, 1, false, "fan failed"]}
    -> {"return": {"audit_id": 12, "action": "admin_set_board_service",
                   "target": "spin5 board (3, 4, 1)", "reason": "fan failed", ...}}

`ADMIN_SPECS` lists the commands; a server routes them through its own command table.
Importing this module also registers them with `protocol.commands`, for the clients'
`get_spec`. The server checks the token with `check_operator_token` before doing anything.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from protocol.commands import (
    MAX_INT,
    CommandSpec,
    Param,
    check_bool,
    check_int,
    check_job_id,
    check_optional_str,
    check_str,
    register,
)
from protocol.errors import CommandError
from protocol.events import BoardState

__all__ = [
    "ADMIN_COMMAND_NAMES",
    "ADMIN_SPECS",
    "MAX_AUDIT_ENTRIES",
    "AdminDestroyJobArgs",
    "AdminDrainMachineArgs",
    "AdminMachineStateArgs",
    "AdminSetBoardServiceArgs",
    "AdminSetLinkServiceArgs",
    "AdminUndrainMachineArgs",
    "AuditEntry",
    "AuditLogArgs",
    "BoardStatus",
    "JobOnMachine",
    "LinkOut",
    "MachineState",
    "OperatorTokenError",
    "check_operator_token",
]

MAX_AUDIT_ENTRIES: Final = 10_000
"""The most audit entries one `admin_audit_log` call returns."""


class OperatorTokenError(CommandError):
    """An admin command came without the right operator token; nothing was changed.

    The operator should pass the token from the server's configuration (`--token` or
    ALLOTMENT_OPERATOR_TOKEN).
    """

    def __init__(self, command: str, *, is_configured: bool) -> None:
        if is_configured:
            message = f"{command} needs a valid operator token"
        else:
            message = f"{command} is disabled: the server has no operator token configured"
        super().__init__(message)
        self.command = command


def check_operator_token(command: str, given: str | None, expected: str | None) -> None:
    """Raise unless `given` equals the configured token (compared in constant time).

    Args:
        command: the admin command, named in the error.
        given: the token the request carried.
        expected: `[server] operator_token`; None disables every admin command.

    Raises:
        OperatorTokenError: no token configured, none given, or a wrong one.
    """
    if not expected:
        raise OperatorTokenError(command, is_configured=False)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise OperatorTokenError(command, is_configured=True)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- arguments -------------------------------------------------------------------------------


class _AdminArgs(_Frozen):
    token: str
    reason: str
    operator: str | None = None


class AdminSetBoardServiceArgs(_AdminArgs):
    """Take board (x, y, z) of `machine` out of service (`in_service` false) or back."""

    machine: str
    x: int
    y: int
    z: int
    in_service: bool


class AdminSetLinkServiceArgs(AdminSetBoardServiceArgs):
    """Take the link leaving board (x, y, z) in direction `link` (0..5) out or back."""

    link: int = Field(ge=0, le=5)


class AdminDrainMachineArgs(_AdminArgs):
    """Stop allocating on `machine`: queued jobs wait, running jobs keep their boards."""

    machine: str


class AdminUndrainMachineArgs(AdminDrainMachineArgs):
    """Allocate on `machine` again."""


class AdminDestroyJobArgs(_AdminArgs):
    """Destroy any job, whoever owns it; `job_id` None means no such job."""

    job_id: int | None


class AuditLogArgs(_Frozen):
    """The newest `limit` audit entries."""

    token: str
    limit: int = Field(default=50, ge=1, le=MAX_AUDIT_ENTRIES)


class AdminMachineStateArgs(_Frozen):
    """Board-by-board state of `machine`, for the operator's map."""

    machine: str
    token: str | None = None


# --- replies ---------------------------------------------------------------------------------


class AuditEntry(_Frozen):
    """One recorded operator action: who, what, why, when.

    Attributes:
        audit_id: increasing number of the entry.
        timestamp_s: Unix time of the action.
        operator: who said they acted (free text; None if not given).
        peer: the address the command came from.
        action: the admin command name.
        target: what was acted on, e.g. "spin5 board (3, 4, 1)" or "job 17".
        reason: why.
    """

    audit_id: int
    timestamp_s: float
    operator: str | None
    peer: str
    action: str
    target: str
    reason: str


class BoardStatus(_Frozen):
    """One board of a machine as the map draws it."""

    x: int
    y: int
    z: int
    cabinet: int | None = None
    frame: int | None = None
    board: int | None = None
    state: BoardState
    job_id: int | None = None
    reason: str | None = None
    n_dead_links: int = 0


class JobOnMachine(_Frozen):
    """A job holding boards on the machine, for the map's legend."""

    job_id: int
    owner: str
    n_boards: int
    state: int


class LinkOut(_Frozen):
    """A board link that carries nothing: dead in the configuration or out of service.

    `link` is the direction number (0 E, 1 NE, 2 N, 3 W, 4 SW, 5 S); `reason` is the
    operator's, for a link taken out of service.
    """

    x: int
    y: int
    z: int
    link: int
    is_dead: bool
    reason: str | None = None


class MachineState(_Frozen):
    """Every board of one machine, the jobs on it and the links that are out.

    `width` and `height` are in triads (3 boards each); `boards` lists every board slot of
    the grid, dead ones included.
    """

    name: str
    width: int
    height: int
    is_draining: bool = False
    boards: tuple[BoardStatus, ...]
    jobs: tuple[JobOnMachine, ...] = ()
    links_out: tuple[LinkOut, ...] = ()


# --- registration ----------------------------------------------------------------------------


def _check_limit(command: str, name: str, value: Any) -> int:
    limit = check_int(command, name, value)
    if not 1 <= limit <= MAX_AUDIT_ENTRIES:
        raise CommandError(f"{command}() argument '{name}' must be in 1..{MAX_AUDIT_ENTRIES}")
    return limit


def _check_link(command: str, name: str, value: Any) -> int:
    link = check_int(command, name, value)
    if not 0 <= link <= 5:  # the six link directions E, NE, N, W, SW, S
        raise CommandError(f"{command}() argument '{name}' must be a link 0..5, not {link}")
    return link


def _check_coordinate(command: str, name: str, value: Any) -> int:
    coordinate = check_int(command, name, value)
    if not 0 <= coordinate <= MAX_INT:
        raise CommandError(f"{command}() argument '{name}' must not be negative")
    return coordinate


_TOKEN = Param("token", check=check_str)
_OPTIONAL_TOKEN = Param("token", None, check_optional_str)
_MACHINE = Param("machine", check=check_str)
_REASON = Param("reason", check=check_str)
_OPERATOR = Param("operator", None, check_optional_str)
_BOARD = (
    _MACHINE,
    Param("x", check=_check_coordinate),
    Param("y", check=_check_coordinate),
    Param("z", check=_check_coordinate),
)
_IN_SERVICE = Param("in_service", check=check_bool)

ADMIN_SPECS: Final = (
    CommandSpec(
        "admin_set_board_service",
        (_TOKEN, *_BOARD, _IN_SERVICE, _REASON, _OPERATOR),
        AdminSetBoardServiceArgs,
        AuditEntry,
        "take a board out of service or back (operator)",
    ),
    CommandSpec(
        "admin_set_link_service",
        (_TOKEN, *_BOARD, Param("link", check=_check_link), _IN_SERVICE, _REASON, _OPERATOR),
        AdminSetLinkServiceArgs,
        AuditEntry,
        "take a board link out of service or back (operator)",
    ),
    CommandSpec(
        "admin_drain_machine",
        (_TOKEN, _MACHINE, _REASON, _OPERATOR),
        AdminDrainMachineArgs,
        AuditEntry,
        "stop allocating on a machine (operator)",
    ),
    CommandSpec(
        "admin_undrain_machine",
        (_TOKEN, _MACHINE, _REASON, _OPERATOR),
        AdminUndrainMachineArgs,
        AuditEntry,
        "allocate on a drained machine again (operator)",
    ),
    CommandSpec(
        "admin_destroy_job",
        (_TOKEN, Param("job_id", check=check_job_id, is_null_default=False), _REASON, _OPERATOR),
        AdminDestroyJobArgs,
        AuditEntry,
        "destroy any job with a reason (operator)",
    ),
    CommandSpec(
        "admin_audit_log",
        (_TOKEN, Param("limit", 50, _check_limit)),
        AuditLogArgs,
        list[AuditEntry],
        "the newest operator actions, newest first (operator)",
    ),
    CommandSpec(
        "admin_machine_state",
        (_MACHINE, _OPTIONAL_TOKEN),
        AdminMachineStateArgs,
        MachineState,
        "every board of a machine with its state and job",
    ),
)

for _spec in ADMIN_SPECS:
    register(_spec)

ADMIN_COMMAND_NAMES: Final = frozenset(spec.name for spec in ADMIN_SPECS)
"""The operator extension commands this module registers."""
