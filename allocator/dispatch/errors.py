"""The dispatch extension's errors: what a job runner did wrong, or why its run ended.

All derive from `AllocatorError`, so the server answers them as `{"exception": message}`.
"""

from __future__ import annotations

from allocator.errors import AllocatorError

__all__ = [
    "DispatchError",
    "ImageRejectedError",
    "ImageTooLargeError",
    "JobNotReadyError",
    "NoImageError",
    "NoResultsError",
    "RunBusyError",
    "StateNotKeptError",
    "TokenError",
    "UploadError",
]


class DispatchError(AllocatorError):
    """Base of the dispatch extension's errors; nothing was changed."""


class JobNotReadyError(DispatchError):
    """The job is not ready (queued, powering, off or gone); wait for state 3 or allocate anew."""

    def __init__(self, job_id: int | None, what: str) -> None:
        super().__init__(f"job {job_id} {what}")


class TokenError(DispatchError):
    """The request lacks the job's token (or the owner on the first load); use the right one."""


class ImageTooLargeError(DispatchError):
    """The announced image is larger than the server accepts per job."""

    def __init__(self, job_id: int, n_bytes: int, max_bytes: int) -> None:
        super().__init__(
            f"an image of {n_bytes} bytes for job {job_id} is over the limit of {max_bytes} bytes"
        )


class UploadError(DispatchError):
    """The image's bytes did not arrive whole (lost connection, stall, wrong length or checksum)."""


class ImageNotStoredError(DispatchError):
    """The server could not write the image or its record (a full or failing disk); the job
    keeps its token but has no image: load it again once the operator has made room."""

    def __init__(self, job_id: int, error: OSError) -> None:
        why = error.strerror or str(error) or type(error).__name__
        super().__init__(
            f"the image of job {job_id} could not be stored ({why.lower()}): load it again"
        )


class RunNotStoredError(DispatchError):
    """The server could not record a run it was asked to start (a full or failing disk):
    nothing runs, the job is as it was; start it again once the operator has made room."""

    def __init__(self, job_id: int, run_id: int, error: OSError) -> None:
        why = error.strerror or str(error) or type(error).__name__
        super().__init__(
            f"run {run_id} of job {job_id} could not be recorded ({why.lower()}): nothing ran;"
            " start it again"
        )


class ImageRejectedError(DispatchError):
    """The image does not fit the job's allocation; the message names the chip or core."""

    def __init__(self, job_id: int, detail: str) -> None:
        super().__init__(f"image for job {job_id} rejected: {detail}")


class StateNotKeptError(DispatchError):
    """A keep-state load's image cannot take over the running state; the previous image and
    state stay. Map the changed network afresh and load it without keep_state."""

    def __init__(self, job_id: int, detail: str) -> None:
        super().__init__(f"image for job {job_id} cannot take over the running state: {detail}")


class NoImageError(DispatchError):
    """The job has no image loaded (none yet, or its boards were powered off or reset)."""

    def __init__(self, job_id: int, detail: str = "has no image loaded") -> None:
        super().__init__(f"job {job_id} {detail}")


class RunBusyError(DispatchError):
    """The job already has a run queued or running; stop it or wait for it to end."""

    def __init__(self, job_id: int, run_id: int, state: str) -> None:
        super().__init__(f"job {job_id} already has run {run_id} {state}")


class NoResultsError(DispatchError):
    """The job has no results (no run finished), or the part named does not exist."""
