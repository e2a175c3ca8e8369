"""Dispatch extension commands: load a job's image, run it, follow it, fetch its results.

Same envelope as v1, new names. Two commands carry raw bytes next to their JSON line, never
base64 inside it (``docs/dispatch.md`` has the whole exchange)::

    load_image   client: {"command": "load_image", "kwargs": {job_id, n_bytes, sha256, ...}}
                 server: {"return": {"accepting_bytes": N}}      (or an exception: send nothing)
                 client: N raw bytes
                         (+ 64 hex digits of the sha256 if the header had none: a trailer)
                 server: {"return": {"token": ..., ...}}         (or an exception)

    fetch_results client: {"command": "fetch_results", "kwargs": {job_id, token, part, ...}}
                  server: {"return": {"n_bytes": N, "sha256": ..., ...}} then N raw bytes

The go-ahead before the body works as HTTP's ``Expect: 100-continue``: a refused upload
costs one line, and the server knows the next N bytes are the body before they arrive.

Access: spalloc v1 has no authentication. The first ``load_image`` of a job must name the
job's ``owner`` and answers a random ``token``; every later dispatch command on that job
(another load, runs, status, results) must carry it.

Importing this module registers the commands with `protocol.commands`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

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

__all__ = [
    "DIGEST_TRAILER_BYTES",
    "DISPATCH_COMMAND_NAMES",
    "MAX_FETCH_BYTES",
    "PART_ALL",
    "PART_INDEX",
    "FetchResultsArgs",
    "ImageLoaded",
    "LoadImageArgs",
    "ResultsChunk",
    "RunProgress",
    "RunState",
    "RunStatus",
    "RunStatusArgs",
    "StartRunArgs",
    "StopRunArgs",
    "UploadReady",
]

_SHA256_HEX_CHARS: Final = 64
DIGEST_TRAILER_BYTES: Final = _SHA256_HEX_CHARS
"""The length of the sha256 (lowercase hex) that follows a body announced without one."""
MAX_FETCH_BYTES: Final = 1024 * 1024
"""The most bytes one `fetch_results` reply carries; a client asks again from the next offset.

Small enough that writing one reply never holds the server's event loop for long."""
PART_ALL: Final = "all"
"""The part naming the whole results file (every recording and the provenance)."""
PART_INDEX: Final = "index"
"""The part naming the results file's index (which parts exist, their types and shapes)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunState(StrEnum):
    """Where a run is: waiting for a worker, running, or ended one of three ways."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def is_over(self) -> bool:
        """Whether the run has ended (it will not change again)."""
        return self in (RunState.DONE, RunState.FAILED, RunState.STOPPED)


# --- arguments -------------------------------------------------------------------------------


class LoadImageArgs(_Frozen):
    """Announce an image of `n_bytes` bytes with this sha256 (hex) for `job_id`.

    With `sha256` None the digest follows the body instead: `DIGEST_TRAILER_BYTES` hex
    digits right after its last byte, so that the client hashes while it sends.
    `owner` must be the job's owner on the first load; `token` is needed on every later one.
    With `is_keeping_state` (``keep_state`` on the wire) the next run continues the running
    state (time, potentials, queues, random generators) with the new image's parameters,
    and the results go on from those recorded since the last fresh run; an image that lays
    the network out otherwise is refused, and the previous image and state stay.
    """

    job_id: int | None
    n_bytes: int
    sha256: str | None = None
    owner: str | None = None
    token: str | None = None
    is_keeping_state: bool = False


class StartRunArgs(_Frozen):
    """Run the loaded image `n_steps` timesteps on from where the last run left it (or afresh)."""

    job_id: int | None
    token: str
    n_steps: int
    is_fresh: bool = False
    is_watched: bool = True


class RunStatusArgs(_Frozen):
    """The state of a job's latest run."""

    job_id: int | None
    token: str


class StopRunArgs(_Frozen):
    """Stop a job's run (queued or running); `reason` is recorded."""

    job_id: int | None
    token: str
    reason: str | None = None


class FetchResultsArgs(_Frozen):
    """Bytes `offset` .. `offset + max_bytes` of one part of a job's results."""

    job_id: int | None
    token: str
    part: str = PART_ALL
    offset: int = 0
    max_bytes: int = MAX_FETCH_BYTES


# --- replies ---------------------------------------------------------------------------------


class UploadReady(_Frozen):
    """The go-ahead of `load_image`: send exactly this many raw bytes now."""

    accepting_bytes: int


class ImageLoaded(_Frozen):
    """An image passed validation and is stored as the job's image.

    Attributes:
        state_step: the step the next run continues from: the state kept by a keep-state
            load, 0 when the next run starts from the image.
    """

    job_id: int
    token: str
    n_bytes: int
    sha256: str
    n_cores: int
    n_chips: int
    timestep_us: int
    state_step: int = 0


class RunStatus(_Frozen):
    """A job's latest run.

    Attributes:
        run_id: numbers the job's runs from 1 (0: no run yet).
        queue_position: runs ahead of this one in the queue (0: next), None unless queued.
        steps_done: steps of this run done so far.
        steps_total: steps this run was asked for.
        first_step: the step of the job's state this run started from (0 for a fresh run).
        reason: why it failed or was stopped; None otherwise.
    """

    job_id: int
    run_id: int
    state: RunState | None
    steps_done: int = 0
    steps_total: int = 0
    first_step: int = 0
    queue_position: int | None = None
    reason: str | None = None


class RunProgress(_Frozen):
    """Notification: a watched run moved (``{"run_progress": {...RunStatus...}}``)."""

    run_progress: RunStatus


class ResultsChunk(_Frozen):
    """The header of a `fetch_results` reply; `n_bytes` raw bytes follow the line.

    `snapshot` names the run whose results these are: a client fetching in several ranges
    starts again if it changes (a later run replaced them).
    """

    part: str
    snapshot: str
    offset: int
    n_bytes: int
    total_bytes: int
    sha256: str


# --- checks and the command table ------------------------------------------------------------


def _check_sha256(command: str, name: str, value: Any) -> str:
    text = check_str(command, name, value)
    if len(text) != _SHA256_HEX_CHARS or any(c not in "0123456789abcdef" for c in text):
        raise CommandError(f"{command}() argument '{name}' must be 64 lowercase hex digits")
    return text


def _check_optional_sha256(command: str, name: str, value: Any) -> str | None:
    return None if value is None else _check_sha256(command, name, value)


def _check_count(command: str, name: str, value: Any) -> int:
    number = check_int(command, name, value)
    if number < 0:
        raise CommandError(f"{command}() argument '{name}' must not be negative, not {number}")
    return number


def _check_positive(command: str, name: str, value: Any) -> int:
    number = check_int(command, name, value)
    if number < 1:
        raise CommandError(f"{command}() argument '{name}' must be at least 1, not {number}")
    return number


def _check_job_id(command: str, name: str, value: Any) -> int:
    """A job id, refused by name when it is none: unlike the v1 commands (where, as in the
    reference, a bad id is just a job that does not exist), these are no client's guess."""
    if type(value) is float and value.is_integer():
        value = int(value)  # as the v1 commands take it (7.0 is job 7)
    if type(value) is not int:
        raise CommandError(f"{command}() argument '{name}' must be an integer, not {value!r:.60}")
    job_id = check_job_id(command, name, value)
    if job_id is None:
        raise CommandError(f"{command}() argument '{name}' is not a job id: {value!s:.60}")
    return job_id


_JOB_ID = Param("job_id", check=_check_job_id, is_null_default=False)
_TOKEN = Param("token", check=check_str)

_SPECS: Final = (
    CommandSpec(
        "load_image",
        (
            _JOB_ID,
            Param("n_bytes", check=_check_count),
            Param("sha256", None, check=_check_optional_sha256),
            Param("owner", None, check_optional_str),
            Param("token", None, check_optional_str),
            Param("keep_state", False, check_bool, field="is_keeping_state"),
        ),
        LoadImageArgs,
        ImageLoaded,
        "upload a job's image (raw bytes after the go-ahead); answers the job's token;"
        " keep_state carries the running state over to it",
    ),
    CommandSpec(
        "start_run",
        (
            _JOB_ID,
            _TOKEN,
            Param("n_steps", check=_check_positive),
            Param("fresh", False, check_bool, field="is_fresh"),
            Param("notify", True, check_bool, field="is_watched"),
        ),
        StartRunArgs,
        RunStatus,
        "queue a run of the loaded image; progress notifications unless notify is false",
    ),
    CommandSpec("run_status", (_JOB_ID, _TOKEN), RunStatusArgs, RunStatus, "a job's latest run"),
    CommandSpec(
        "stop_run",
        (_JOB_ID, _TOKEN, Param("reason", None, check_optional_str)),
        StopRunArgs,
        RunStatus,
        "stop a job's queued or running run",
    ),
    CommandSpec(
        "fetch_results",
        (
            _JOB_ID,
            _TOKEN,
            Param("part", PART_ALL, check_str),
            Param("offset", 0, _check_count),
            Param("max_bytes", MAX_FETCH_BYTES, _check_positive),
        ),
        FetchResultsArgs,
        ResultsChunk,
        "a byte range of a job's results (raw bytes after the reply line)",
    ),
)
for _spec in _SPECS:
    register(_spec)

DISPATCH_SPECS: Final = _SPECS
"""The dispatch extension's commands, for a server's command table."""
DISPATCH_COMMAND_NAMES: Final = frozenset(spec.name for spec in _SPECS)
"""The dispatch extension's command names."""
assert MAX_FETCH_BYTES <= MAX_INT
