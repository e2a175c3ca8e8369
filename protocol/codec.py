"""One line of bytes <-> one message: the only module of the project that touches json.

Output is exactly what the reference server writes, `json.dumps(obj)` with its default
separators plus `"\\n"`, so byte-level comparisons against it hold. Decoding is on the hot path
of the server, so it checks the envelope by hand and builds the `Request` without running
pydantic validation a second time; reply models are dumped once, straight to JSON types.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import BaseModel

from protocol.dispatch import RunProgress
from protocol.errors import (
    BadArgsError,
    BadCommandError,
    BadKwargsError,
    BadReplyError,
    InvalidJSONError,
    LineTooLongError,
    NotAnObjectError,
)
from protocol.messages import (
    ExceptionReply,
    JobsChanged,
    MachinesChanged,
    Notification,
    Request,
    ReturnReply,
    ServerMessage,
)

__all__ = [
    "MAX_LINE_BYTES",
    "EncodedJson",
    "ReplyWithBody",
    "decode_request",
    "decode_request_parts",
    "decode_server_message",
    "encode_exception",
    "encode_json",
    "encode_notification",
    "encode_reply",
    "encode_request",
    "json_text",
    "to_jsonable",
]

MAX_LINE_BYTES = 65536
"""The longest request line accepted, newline excluded; a server should stop reading there."""

_MAX_REPLY_LINE_BYTES = 64 * 1024 * 1024
_NULL_REPLY = b'{"return": null}\n'

_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "object",
    list: "list",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def _decode(text: str) -> Any:
    """`_decoder.decode(text)`, without its two whitespace matches for a request that has
    no whitespace around its object (every client's); anything else takes the full path,
    so values and errors are the same."""
    if text[:1] == "{":
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return value
    return _decoder.decode(text)


def _not_serializable(value: object) -> NoReturn:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """`json.JSONEncoder().encode`, with its C encoder built once rather than per call.

    The same text (`json.dumps` with its defaults) without building an encoder object for
    every reply, nor the markers dict of the circular-reference check: replies are trees
    built here, and a cycle (a bug) still fails, with a RecursionError.
    """
    plain: Callable[[Any], str] = json.JSONEncoder().encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator in this interpreter
        return plain
    quote = json.encoder.encode_basestring_ascii
    chunks_of = make(None, _not_serializable, quote, None, ": ", ", ", False, False, True)

    def encode(value: Any) -> str:
        if type(value) is str:
            return quote(value)
        return "".join(chunks_of(value, 0))

    return encode


_encode = _make_encoder()

json_text: Callable[[Any], str] = _encode
"""`json.dumps(value)` with its defaults, on an encoder built once (plain JSON data only)."""


def _type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _loads(line: bytes, max_bytes: int) -> Any:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):  # the server hands over lines without their LF
        line = line[:-1]
    if len(line) > max_bytes:
        raise LineTooLongError(len(line), max_bytes)
    try:
        return _decode(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidJSONError(f"not utf-8 at byte {e.start}") from None
    except ValueError as e:
        # JSONDecodeError, NaN/Infinity, or an integer with too many digits.
        raise InvalidJSONError(str(e).lower()) from None
    except RecursionError:
        raise InvalidJSONError("nested too deeply") from None


def decode_request(line: bytes, *, max_bytes: int = MAX_LINE_BYTES) -> Request:
    """Decode one request line (its trailing newline optional).

    Args:
        line: the bytes of one line.
        max_bytes: the longest line accepted, newline excluded.

    Returns:
        The request; `args` and `kwargs` are raw JSON values, checked later by `bind`.

    Raises:
        LineTooLongError: the line is longer than `max_bytes`.
        InvalidJSONError: not UTF-8 or not JSON.
        NotAnObjectError: valid JSON but not an object.
        BadCommandError: no `command`, or not a string.
        BadArgsError: `args` present but not a list.
        BadKwargsError: `kwargs` present but not an object.
    """
    command, args, kwargs = decode_request_parts(line, max_bytes=max_bytes)
    return Request.model_construct(command=command, args=args, kwargs=kwargs)


def decode_request_parts(
    line: bytes, *, max_bytes: int = MAX_LINE_BYTES
) -> tuple[str, list[Any], dict[str, Any]]:
    """`decode_request` without the model: the command name, `args` and `kwargs`.

    The server's hot path: the same checks and errors, a microsecond or two cheaper than
    building a `Request` it would take apart at once.
    """
    obj = _loads(line, max_bytes)
    if type(obj) is not dict:
        raise NotAnObjectError(_type_name(obj))
    command = obj.get("command")
    if type(command) is not str:
        raise BadCommandError(None if command is None else _type_name(command))
    args = obj.get("args")
    if args is None:
        args = []
    elif type(args) is not list:
        raise BadArgsError(_type_name(args))
    kwargs = obj.get("kwargs")
    if kwargs is None:
        kwargs = {}
    elif type(kwargs) is not dict:
        raise BadKwargsError(_type_name(kwargs))
    return command, args, kwargs


def to_jsonable(value: Any) -> Any:
    """Turn a reply value into plain JSON types: models dumped by alias, tuples kept as arrays.

    Args:
        value: a reply model, a list of them, or plain JSON data (named tuples included).
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if type(value) is list and value and isinstance(value[0], BaseModel):
        return [to_jsonable(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class ReplyWithBody:
    """A reply whose line is followed by raw bytes (`fetch_results`, see `protocol.dispatch`).

    Attributes:
        value: the `return` value; its header tells the client how many bytes follow.
        body: the raw bytes written right after the line.
    """

    value: Any
    body: bytes


@dataclass(frozen=True, slots=True)
class EncodedJson:
    """A reply value encoded once (`encode_json`), for a reply that is given over and over.

    Attributes:
        text: the value's JSON text, as `json.dumps` writes it.
    """

    text: bytes

    def decode(self) -> Any:
        """The value back as plain JSON data."""
        return _decode(self.text.decode("utf-8"))


def encode_json(value: Any) -> EncodedJson:
    """Encode a reply value now, for `encode_reply` to write as it is, as often as needed."""
    return EncodedJson(_encode(to_jsonable(value)).encode())


def encode_reply(value: Any) -> bytes:
    """Encode `{"return": value}` plus newline (and the raw body of a `ReplyWithBody`).

    Args:
        value: plain JSON data, a reply model, a list of reply models, an `EncodedJson`,
            or a `ReplyWithBody`.
    """
    if value is None:
        return _NULL_REPLY  # keepalives, destroys, watches: skip the encoder (a microsecond)
    if type(value) is EncodedJson:
        return b'{"return": ' + value.text + b"}\n"
    if type(value) is ReplyWithBody:
        return encode_reply(value.value) + value.body
    return b'{"return": ' + _encode(to_jsonable(value)).encode() + b"}\n"


def encode_exception(message: str) -> bytes:
    """Encode `{"exception": message}` plus newline."""
    return b'{"exception": ' + _encode(message).encode() + b"}\n"


def encode_notification(notification: Notification | RunProgress) -> bytes:
    """Encode a `jobs_changed`, `machines_changed` or `run_progress` notification plus newline."""
    if isinstance(notification, RunProgress):
        return _encode(to_jsonable(notification)).encode() + b"\n"
    if isinstance(notification, JobsChanged):
        return b'{"jobs_changed": ' + _encode(list(notification.jobs_changed)).encode() + b"}\n"
    return b'{"machines_changed": ' + _encode(list(notification.machines_changed)).encode() + b"}\n"


def encode_request(
    command: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None
) -> bytes:
    """Encode one request line (client side), always with `args` and `kwargs`.

    Args:
        command: the command name.
        args: positional arguments (JSON values).
        kwargs: keyword arguments (JSON values).
    """
    obj = {"command": command, "args": list(args), "kwargs": {} if kwargs is None else kwargs}
    return _encode(obj).encode() + b"\n"


def decode_server_message(line: bytes) -> ServerMessage | RunProgress:
    """Decode one line from the server (client side).

    Args:
        line: the bytes of one line, trailing newline optional.

    Returns:
        A `ReturnReply`, an `ExceptionReply`, or a notification (`run_progress` included).

    Raises:
        InvalidJSONError: not UTF-8 or not JSON.
        BadReplyError: JSON, but not a reply or a known notification.
    """
    obj = _loads(line, _MAX_REPLY_LINE_BYTES)
    if type(obj) is not dict:
        raise BadReplyError(f"a json {_type_name(obj)}")
    if "return" in obj:
        return ReturnReply.model_construct(value=obj["return"])
    if "exception" in obj:
        return ExceptionReply.model_construct(exception=str(obj["exception"]))
    try:
        if "jobs_changed" in obj:
            return JobsChanged.model_validate(obj)
        if "machines_changed" in obj:
            return MachinesChanged.model_validate(obj)
        if "run_progress" in obj:
            return RunProgress.model_validate(obj)
    except ValueError as e:
        raise BadReplyError(f"malformed notification {sorted(obj)}: {e}") from None
    raise BadReplyError(f"object with keys {sorted(obj)[:8]}")
