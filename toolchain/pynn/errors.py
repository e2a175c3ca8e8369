"""Errors of the PyNN backend: what a script asked for that this machine cannot do.

Every other failure keeps its own type: PyNN's errors for misuse of the API, and the
toolchain's (:class:`~toolchain.errors.ResourceError` ...) for a network that does not fit.
"""

from __future__ import annotations

from toolchain.errors import ToolchainError

__all__ = ["NotSupportedError", "RunError"]


class NotSupportedError(ToolchainError, NotImplementedError):
    """The script uses a PyNN feature that this backend does not offer.

    Change the script to use one of the features the message lists.
    """

    def __init__(self, feature: str, supported: str) -> None:
        super().__init__(f"{feature} is not supported on allotment; supported: {supported}")
        self.feature = feature


class RunError(ToolchainError):
    """A run cannot go on as the script asks (structure changed after a run, lost server)."""
