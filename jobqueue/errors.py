"""The batch service's exceptions: client misuse (answered as 4xx) apart from server failure."""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BadRequestError",
    "JobQueueError",
    "NoSuchJobError",
    "NotAuthenticatedError",
    "QuotaExhaustedError",
    "SandboxUnavailableError",
]


class JobQueueError(Exception):
    """Base of every error the batch service raises on purpose; `status` is its HTTP code."""

    status = 400


class BadRequestError(JobQueueError):
    """The request is malformed; fix it and send it again."""


class NotAuthenticatedError(JobQueueError):
    """No token, or one that is unknown or revoked: get a new token from the operator."""

    status = 401

    def __init__(self, reason: str = "invalid_token") -> None:
        super().__init__(reason)


class AccessDeniedError(JobQueueError):
    """The caller does not belong to the collab; the real service answers 404 for it."""

    status = 404

    def __init__(self, collab: str) -> None:
        super().__init__(
            f"You do not have access to this collab or there is no collab with this id: {collab!r}"
        )


class NoSuchJobError(JobQueueError):
    """The job does not exist, or is not visible to the caller."""

    status = 404

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")


class QuotaExhaustedError(JobQueueError):
    """Every accepted project of the collab has used its quota: ask for more before submitting."""

    status = 403

    def __init__(self, collab: str, platform: str) -> None:
        super().__init__(f"collab {collab!r} has no quota left on {platform}")


class SandboxUnavailableError(JobQueueError):
    """The runner cannot isolate a job (bubblewrap missing): install `bwrap`."""

    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(f"sandbox unavailable: {detail}")
