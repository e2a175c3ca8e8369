"""The protocol package's exception hierarchy.

Everything the wire layer raises on purpose derives from `ProtocolError`. The server maps
`DecodeError` and `CommandError` to `{"exception": message}` replies (their messages are safe
to send); the client raises `ServerError`, `ProtocolTimeoutError` and `ConnectionLostError`.
Constructors take facts and build a short lowercase message naming them.
"""

from __future__ import annotations

__all__ = [
    "BadArgsError",
    "BadCommandError",
    "BadKwargsError",
    "BadReplyError",
    "CommandError",
    "ConnectionLostError",
    "DecodeError",
    "DuplicateCommandError",
    "InvalidJSONError",
    "LineTooLongError",
    "NotAnObjectError",
    "ProtocolError",
    "ProtocolTimeoutError",
    "ServerError",
    "UnknownCommandError",
]


class ProtocolError(Exception):
    """Base of every error raised by the `protocol` package."""


class DecodeError(ProtocolError):
    """A line from the peer is not a well-formed message; nothing was executed.

    A server answers it with an `exception` reply and keeps the connection, except for
    `InvalidJSONError` and `LineTooLongError`, after which it may close it (the line could
    not be read at all).
    """


class InvalidJSONError(DecodeError):
    """The line is not UTF-8 or not JSON (NaN and Infinity are not JSON either)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"line is not valid json: {detail}")
        self.detail = detail


class LineTooLongError(DecodeError):
    """The line is longer than the limit; the caller should close the connection."""

    def __init__(self, n_bytes: int, max_bytes: int) -> None:
        super().__init__(f"line of {n_bytes} bytes exceeds the limit of {max_bytes} bytes")
        self.n_bytes = n_bytes
        self.max_bytes = max_bytes


class NotAnObjectError(DecodeError):
    """The line is JSON but not an object."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"request must be a json object, not {type_name}")
        self.type_name = type_name


class BadCommandError(DecodeError):
    """The request has no `command` key, or its value is not a string."""

    def __init__(self, type_name: str | None) -> None:
        if type_name is None:
            message = "request has no 'command'"
        else:
            message = f"'command' must be a string, not {type_name}"
        super().__init__(message)
        self.type_name = type_name


class BadArgsError(DecodeError):
    """The request's `args` is not a JSON array."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"'args' must be a list, not {type_name}")
        self.type_name = type_name


class BadKwargsError(DecodeError):
    """The request's `kwargs` is not a JSON object."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"'kwargs' must be an object, not {type_name}")
        self.type_name = type_name


class BadReplyError(DecodeError):
    """A line from the server is neither a reply nor a known notification.

    The client treats the connection as unusable: FIFO matching can no longer be trusted.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"unexpected message from server: {detail}")
        self.detail = detail


class CommandError(ProtocolError):
    """The arguments of a well-formed request do not fit the command.

    The message reads like Python's own ("get_job_state() missing 1 required positional
    argument: 'job_id'"); the server sends it back as an `exception` reply.
    """


class UnknownCommandError(CommandError):
    """No command of that name is registered."""

    def __init__(self, command: str) -> None:
        super().__init__(f"unknown command {command[:64]!r}")
        self.command = command


class DuplicateCommandError(ProtocolError):
    """A command of that name is already registered; register each name once."""

    def __init__(self, command: str) -> None:
        super().__init__(f"command {command!r} is already registered")
        self.command = command


class ServerError(ProtocolError):
    """The server answered `{"exception": message}`; the connection is still usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProtocolTimeoutError(ProtocolError, TimeoutError):
    """No reply came within the timeout.

    The request may still run on the server; its late reply is discarded, so later calls on
    the same connection stay correctly paired.
    """

    def __init__(self, command: str, timeout_s: float) -> None:
        super().__init__(f"no reply to {command!r} within {timeout_s} s")
        self.command = command
        self.timeout_s = timeout_s


class ConnectionLostError(ProtocolError):
    """The connection closed or failed; open a new client to go on."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"connection lost: {detail}")
        self.detail = detail
