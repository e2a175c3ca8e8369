"""Line <-> message: byte-exact output, every decode error, and no other exception on any input."""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import (
    MAX_LINE_BYTES,
    decode_request,
    decode_request_parts,
    decode_server_message,
    encode_exception,
    encode_notification,
    encode_reply,
    encode_request,
)
from protocol.errors import (
    BadArgsError,
    BadCommandError,
    BadKwargsError,
    BadReplyError,
    DecodeError,
    InvalidJSONError,
    LineTooLongError,
    NotAnObjectError,
)
from protocol.messages import (
    ExceptionReply,
    JobsChanged,
    JobStateReply,
    MachinesChanged,
    Request,
    ReturnReply,
    WireBoardXYZ,
)


def test_request_round_trip() -> None:
    line = encode_request("create_job", [4, 2], {"owner": "me", "tags": ["a"]})
    assert (
        line
        == json.dumps(
            {"command": "create_job", "args": [4, 2], "kwargs": {"owner": "me", "tags": ["a"]}}
        ).encode()
        + b"\n"
    )
    request = decode_request(line)
    assert request == Request(
        command="create_job", args=[4, 2], kwargs={"owner": "me", "tags": ["a"]}
    )


def test_absent_args_and_kwargs_are_empty_and_crlf_is_accepted() -> None:
    request = decode_request(b'{"command": "list_jobs"}\r\n')
    assert (request.command, request.args, request.kwargs) == ("list_jobs", [], {})
    assert decode_request(b'{"command": "x", "args": null, "kwargs": null}').args == []


@pytest.mark.parametrize(
    ("line", "error", "fact"),
    [
        (b"\xff\xfe{}", InvalidJSONError, "utf-8"),
        (b'{"command": ', InvalidJSONError, "json"),
        (b'{"command": "x", "args": [NaN]}', InvalidJSONError, "nan"),
        (b'{"command": "x", "args": [Infinity]}', InvalidJSONError, "infinity"),
        (b"[" * 100_000 + b"]" * 100_000, LineTooLongError, "200000 bytes"),
        (b"[1, 2]", NotAnObjectError, "list"),
        (b'"version"', NotAnObjectError, "string"),
        (b"{}", BadCommandError, "no 'command'"),
        (b'{"command": 5}', BadCommandError, "integer"),
        (b'{"command": null}', BadCommandError, "no 'command'"),
        (b'{"command": "x", "args": {}}', BadArgsError, "object"),
        (b'{"command": "x", "args": "ab"}', BadArgsError, "string"),
        (b'{"command": "x", "kwargs": [1]}', BadKwargsError, "list"),
        (b'{"command": "x", "kwargs": 3}', BadKwargsError, "integer"),
    ],
)
def test_every_decode_error(line: bytes, error: type[DecodeError], fact: str) -> None:
    with pytest.raises(error, match=fact):
        decode_request(line)


def test_deep_nesting_within_the_line_limit_is_invalid_json() -> None:
    depth = MAX_LINE_BYTES // 2 - 10
    with pytest.raises(InvalidJSONError, match="nested too deeply"):
        decode_request(b"[" * depth + b"]" * depth)


def test_huge_integer_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(InvalidJSONError):
        decode_request(b'{"command": "x", "args": [' + b"9" * 5000 + b"]}")


def test_line_limit_is_configurable() -> None:
    with pytest.raises(LineTooLongError, match="limit of 10 bytes"):
        decode_request(b'{"command": "version"}', max_bytes=10)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_give_a_request_or_a_decode_error(line: bytes) -> None:
    try:
        request = decode_request(line)
    except DecodeError:
        return
    assert isinstance(request.command, str)
    assert isinstance(request.args, list)
    assert isinstance(request.kwargs, dict)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


# The machine running the suite is shared: generation speed is not what is under test.
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["command", "args", "kwargs", "x"]), _json))
def test_any_json_object_gives_a_request_or_a_decode_error(obj: dict[str, object]) -> None:
    line = json.dumps(obj).encode()
    try:
        request = decode_request(line)
    except DecodeError as error:
        # The server's model-free decoder refuses the same lines with the same error.
        with pytest.raises(type(error), match="^" + re.escape(str(error)) + "$"):
            decode_request_parts(line)
        return
    assert request.command == obj["command"]
    assert decode_request_parts(line) == (request.command, request.args, request.kwargs)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_any_reply_value_encodes_as_json_dumps_does(value: object) -> None:
    assert encode_reply(value) == json.dumps({"return": value}).encode() + b"\n"


def test_unencodable_reply_values_fail_as_json_dumps_does() -> None:
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        encode_reply({"x": object()})


class _Board(NamedTuple):
    x: int
    y: int
    z: int


def test_replies_are_byte_identical_to_json_dumps() -> None:
    value = {"a": [1, 2.5, None, True], "é": "ü"}
    assert encode_reply(value) == json.dumps({"return": value}).encode() + b"\n"
    board = _Board(1, 2, 0)  # named tuples are arrays, floats are repr'd, as json.dumps does
    value = {"b": [board, (3, 4)], "f": [1e300, -0.0, 0.1, float("nan")], "s": '\n"\x00'}
    assert encode_reply(value) == json.dumps({"return": value}).encode() + b"\n"
    assert encode_reply("text") == json.dumps({"return": "text"}).encode() + b"\n"
    assert encode_reply(None) == b'{"return": null}\n'
    assert encode_exception("job 7 does not exist") == b'{"exception": "job 7 does not exist"}\n'


def test_reply_models_and_lists_of_models_are_dumped_by_alias() -> None:
    state = JobStateReply(
        state=1, power=None, keepalive_s=None, reason=None, start_time=2.0, keepalivehost=None
    )
    expected = {
        "state": 1,
        "power": None,
        "keepalive": None,
        "reason": None,
        "start_time": 2.0,
        "keepalivehost": None,
    }
    assert json.loads(encode_reply(state)) == {"return": expected}
    assert json.loads(encode_reply([state, state])) == {"return": [expected, expected]}
    assert encode_reply(WireBoardXYZ(1, 2, 0)) == b'{"return": [1, 2, 0]}\n'


def test_notifications_encode_like_the_reference_and_decode_back() -> None:
    jobs = encode_notification(JobsChanged(jobs_changed=(3, 7)))
    machines = encode_notification(MachinesChanged(machines_changed=("spinn-1200",)))
    assert jobs == b'{"jobs_changed": [3, 7]}\n'
    assert machines == b'{"machines_changed": ["spinn-1200"]}\n'
    assert decode_server_message(jobs) == JobsChanged(jobs_changed=(3, 7))
    assert decode_server_message(machines) == MachinesChanged(machines_changed=("spinn-1200",))


def test_server_messages_decode() -> None:
    reply = decode_server_message(b'{"return": [1, 2]}\n')
    assert isinstance(reply, ReturnReply)
    assert reply.value == [1, 2]
    assert decode_server_message(b'{"exception": "bad"}') == ExceptionReply(exception="bad")


@pytest.mark.parametrize(
    ("line", "error", "fact"),
    [
        (b"[]", BadReplyError, "json list"),
        (b'{"hello": 1}', BadReplyError, "hello"),
        (b'{"jobs_changed": "x"}', BadReplyError, "malformed notification"),
        (b"nope", InvalidJSONError, "json"),
    ],
)
def test_bad_server_messages(line: bytes, error: type[DecodeError], fact: str) -> None:
    with pytest.raises(error, match=fact):
        decode_server_message(line)
