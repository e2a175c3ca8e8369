"""The spalloc v1 wire protocol (plus allotment's extension commands) and an anyio client.

`messages` holds the pydantic models, `codec` turns lines into them and back, `commands` is
the command table and binds raw arguments Python-style, `client` talks to a server, `events`
describes the MQTT payloads. This package imports only the standard library, pydantic and
anyio.
"""

from protocol.client import DEFAULT_PORT, AllotmentClient
from protocol.codec import (
    MAX_LINE_BYTES,
    decode_request,
    decode_server_message,
    encode_exception,
    encode_notification,
    encode_reply,
    encode_request,
)
from protocol.commands import V1_VERSION, CommandSpec, Param, bind, get_spec, register
from protocol.errors import (
    CommandError,
    ConnectionLostError,
    DecodeError,
    ProtocolError,
    ProtocolTimeoutError,
    ServerError,
    UnknownCommandError,
)
from protocol.messages import Request

__all__ = [
    "DEFAULT_PORT",
    "MAX_LINE_BYTES",
    "V1_VERSION",
    "AllotmentClient",
    "CommandError",
    "CommandSpec",
    "ConnectionLostError",
    "DecodeError",
    "Param",
    "ProtocolError",
    "ProtocolTimeoutError",
    "Request",
    "ServerError",
    "UnknownCommandError",
    "bind",
    "decode_request",
    "decode_server_message",
    "encode_exception",
    "encode_notification",
    "encode_reply",
    "encode_request",
    "get_spec",
    "register",
]
