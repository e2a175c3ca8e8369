"""Hostile and malformed input over raw sockets: the server answers clearly and keeps serving.

Every bad request must come back as one `{"exception": ...}` reply on a connection that stays
open, except an undecodable or oversized line, after which the server may close that one
connection. Whatever happens, other clients keep getting answers and no job is left behind by
a rejected request.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import MACHINE_NAME, RawClient, ServerProcess

OWNER = "hostile@example.org"
N_IDLE_CONNECTIONS = 1000
OVERSIZED_LINE_BYTES = 8 * 1024 * 1024
SMALLEST_SANE_LINE_LIMIT_BYTES = 64 * 1024

Connect = Callable[[], RawClient]


def _assert_serving(connect: Connect) -> None:
    """A fresh client gets a version string back."""
    probe = connect()
    assert isinstance(probe.call("version"), str)


def _assert_still_open(client: RawClient) -> None:
    reply = client.request("version")
    assert isinstance(reply.get("return"), str), f"connection unusable after bad input: {reply}"


def _my_job_ids(client: RawClient) -> set[int]:
    return {job["job_id"] for job in client.call("list_jobs") if job["owner"] == OWNER}


@pytest.mark.parametrize(
    ("line", "fact"),
    [
        (b"{not json\n", "json"),
        (b'{"command": "version"\n', "json"),
        (b"[1, 2, 3]\n", "object"),
        (b'"version"\n', "object"),
        (b"42\n", "object"),
        (b"null\n", "object"),
        (b"{}\n", "command"),
        (b'{"command": 5}\n', "command"),
        (b'{"command": null}\n', "command"),
        (b'{"command": "launch_missiles"}\n', "launch_missiles"),
        (b'{"command": "__init__"}\n', "__init__"),
        (b'{"command": "version", "args": {"a": 1}}\n', "args"),
        (b'{"command": "version", "kwargs": [1]}\n', "kwargs"),
        (b'{"command": "version", "args": "abc"}\n', "args"),
    ],
)
def test_malformed_request_gets_exception_and_connection_stays(
    raw_client: Connect, line: bytes, fact: str
) -> None:
    client = raw_client()
    client.send_line(line)
    reply = client.read_reply()
    assert reply is not None, f"server closed the connection after {line!r}"
    assert set(reply) == {"exception"}, reply
    assert isinstance(reply["exception"], str)
    assert fact.lower() in reply["exception"].lower(), reply
    _assert_still_open(client)


@pytest.mark.parametrize(
    ("command", "args", "kwargs", "facts"),
    [
        ("create_job", [], {}, ("owner",)),
        ("create_job", [1], {"owner": None}, ("owner",)),
        ("create_job", [], {"owner": OWNER, "machine": MACHINE_NAME, "tags": ["x"]}, ("machine",)),
        ("create_job", [], {"owner": OWNER, "keepalive": "soon"}, ("keepalive",)),
        ("create_job", ["two"], {"owner": OWNER}, ("two", "int")),
        ("create_job", [1, 2, 3, 4, 5, 6], {"owner": OWNER}, ("argument", "args", "6")),
        ("create_job", [], {"owner": OWNER, "colour": "red"}, ("colour",)),
        ("create_job", [1.5], {"owner": OWNER}, ("1.5", "int")),
        ("create_job", [], {"owner": OWNER, "tags": "default"}, ("tags",)),
        ("create_job", [], {"owner": OWNER, "min_ratio": "square"}, ("min_ratio",)),
        ("create_job", [], {"owner": ["a", "list"]}, ("owner",)),
        ("get_job_state", [], {}, ("job_id",)),
        ("get_job_state", [1, 2], {}, ("argument", "args")),
        ("destroy_job", [], {"reason": "x"}, ("job_id",)),
        ("where_is", [], {"machine": MACHINE_NAME, "x": 0}, ("where_is", "arguments")),
        ("where_is", [], {"machine": MACHINE_NAME, "x": "a", "y": 0, "z": 0}, ("x", "int")),
        ("get_board_position", [MACHINE_NAME, 0], {}, ("argument", "args", "y")),
        ("version", [1], {}, ("argument", "args", "version")),
        # a lone surrogate, as JSON can escape it: no text the store or a reply can carry
        ("create_job", [1], {"owner": "\ud800"}, ("owner", "not valid text")),
        ("create_job", [1], {"owner": OWNER, "tags": ["\udfff"]}, ("tags", "not valid text")),
        ("destroy_job", [1, "\ud800"], {}, ("reason", "not valid text")),
    ],
)
def test_bad_arguments_get_exception_and_leave_no_job(
    raw_client: Connect,
    command: str,
    args: list[Any],
    kwargs: dict[str, Any],
    facts: tuple[str, ...],
) -> None:
    client = raw_client()
    before = _my_job_ids(client)
    reply = client.request(command, *args, **kwargs)
    assert set(reply) == {"exception"}, reply
    message = reply["exception"].lower()
    assert any(fact in message for fact in facts), f"{reply} names none of {facts}"
    assert _my_job_ids(client) == before, "a rejected request left a job behind"
    _assert_still_open(client)


@pytest.mark.parametrize(
    ("command", "args", "kwargs"),
    [
        ("create_job", [10**30], {"owner": OWNER}),
        ("create_job", [10**30, 1], {"owner": OWNER}),
        ("create_job", [-(10**30), 0, 0], {"owner": OWNER, "machine": MACHINE_NAME}),
        ("create_job", [], {"owner": OWNER, "keepalive": 1e308 * 10}),
        ("create_job", [], {"owner": OWNER, "keepalive": -5}),
        ("create_job", [0], {"owner": OWNER}),
        ("create_job", [-3], {"owner": OWNER}),
        ("create_job", [], {"owner": OWNER, "tags": [f"t{i}" for i in range(100_000)]}),
        ("create_job", list(range(100_000)), {"owner": OWNER}),
        ("create_job", [], {"owner": "x" * 1_000_000}),
        ("get_job_state", [10**30], {}),
        ("get_job_state", ["abc"], {}),
        ("destroy_job", [10**30], {"reason": "r" * 100_000}),
        ("get_job_machine_info", [-1], {}),
        ("where_is", [], {"machine": MACHINE_NAME, "x": 10**30, "y": 0, "z": 0}),
        ("where_is", [], {"machine": MACHINE_NAME, "chip_x": -(10**30), "chip_y": 0}),
        ("get_board_position", [MACHINE_NAME, 10**30, 0, 0], {}),
        ("get_board_at_position", [MACHINE_NAME, 0, 0, -(10**30)], {}),
        ("notify_job", [[1] * 100_000], {}),
    ],
)
def test_huge_values_are_answered_without_harm(
    raw_client: Connect, command: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    client = raw_client()
    before = _my_job_ids(client)
    # 1e308 * 10 is inf, which json.dumps writes as the non-standard token Infinity.
    line = json.dumps({"command": command, "args": args, "kwargs": kwargs}).encode() + b"\n"
    client.send_line(line)
    reply = client.read_reply()
    is_over_limit = len(line) > SMALLEST_SANE_LINE_LIMIT_BYTES
    if reply is None or (is_over_limit and "exception" in reply):
        # Only a line over the line limit may be refused by closing the connection.
        assert is_over_limit, f"closed after {line[:200]!r}"
        _assert_serving(raw_client)
        return
    assert len(reply) == 1, reply
    assert set(reply) <= {"return", "exception"}, reply
    if command == "create_job" and "return" in reply:
        job_id = reply["return"]
        assert isinstance(job_id, int)
        state = client.call("get_job_state", job_id)
        if state["state"] != 4:
            # Accepted as a real job (e.g. a long owner name): it must be a normal job.
            assert state["state"] in (1, 2, 3), state
            client.call("destroy_job", job_id, "hostile test")
        else:
            assert state["reason"] == "Cancelled: No suitable machines available.", state
    assert _my_job_ids(client) == before, "a hostile request left a job behind"
    _assert_still_open(client)


def test_blank_lines_are_answered_as_malformed_and_replies_come_in_order(
    raw_client: Connect,
) -> None:
    client = raw_client()
    client.send_line(
        b"\n \t\r\n"
        + json.dumps({"command": "get_job_state", "args": [10**9]}).encode()
        + b"\n"
        + json.dumps({"command": "launch_missiles"}).encode()
        + b"\n"
        + json.dumps({"command": "list_machines"}).encode()
        + b"\n"
    )
    replies = [client.read_reply() for _ in range(5)]
    empty, whitespace, first, second, third = replies
    for blank in (empty, whitespace):
        assert blank is not None
        assert "not valid json" in blank["exception"]
    assert first is not None
    assert first["return"]["state"] == 0
    assert second is not None
    assert "exception" in second
    assert third is not None
    assert [m["name"] for m in third["return"]] == [MACHINE_NAME]


@pytest.mark.parametrize(
    "line",
    [
        b"\xff\xfe\xfd{" + b'"command": "version"}\n',
        b'{"command": "version"}' + b" " * OVERSIZED_LINE_BYTES + b"\n",
        b"x" * OVERSIZED_LINE_BYTES,
    ],
    ids=["undecodable", "oversized", "oversized-no-newline"],
)
def test_unreadable_line_closes_or_answers_and_server_keeps_serving(
    raw_client: Connect, line: bytes
) -> None:
    client = raw_client()
    try:
        client.send_line(line)
        if not line.endswith(b"\n"):
            client.sock.shutdown(socket.SHUT_WR)
        reply = client.read_reply()
    except (ConnectionResetError, BrokenPipeError):
        reply = None  # closed while we were still sending: allowed for an oversized line
    if reply is not None:
        assert set(reply) == {"exception"}, f"an unreadable line was accepted: {reply}"
    _assert_serving(raw_client)


def test_client_that_sends_half_a_line_and_vanishes(
    raw_client: Connect, shared_server: ServerProcess
) -> None:
    before = _my_job_ids(raw_client())
    for _ in range(20):
        sock = socket.create_connection((shared_server.host, shared_server.port))
        sock.sendall(
            b'{"command": "create_job", "args": [1], "kwargs": {"owner": "' + OWNER.encode()
        )
        sock.close()
    half_open = socket.create_connection((shared_server.host, shared_server.port))
    half_open.sendall(b'{"command": "vers')
    try:
        client = raw_client()
        assert isinstance(client.call("version"), str)
        assert _my_job_ids(client) == before, "a half-sent create_job made a job"
    finally:
        half_open.close()
    assert shared_server.is_running()


def test_many_idle_connections_do_not_stop_service(
    start_server: Callable[..., ServerProcess],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = N_IDLE_CONNECTIONS + 200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit on open files is {hard}, below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # The server subprocess inherits this limit; both ends stay bounded.
        raised = wanted * 2 if hard == resource.RLIM_INFINITY else min(hard, wanted * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    idle: list[socket.socket] = []
    try:
        server = start_server()
        for _ in range(N_IDLE_CONNECTIONS):
            idle.append(socket.create_connection((server.host, server.port), timeout=10.0))
        client = RawClient(server.host, server.port)
        try:
            job_id = client.call("create_job", owner=OWNER, keepalive=60.0)
            assert client.wait_for_state(job_id, 3)["power"] is True
            assert isinstance(client.call("version"), str)
        finally:
            client.close()
        # The idle connections were accepted and are served too.
        for sock in idle[:: N_IDLE_CONNECTIONS // 10]:
            sock.sendall(b'{"command": "version"}\n')
            reply = sock.recv(4096)
            assert reply.startswith(b'{"return"'), reply
    finally:
        for sock in idle:
            with contextlib.suppress(OSError):
                sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_server_survived_the_module(shared_server: ServerProcess, raw_client: Connect) -> None:
    assert shared_server.is_running()
    client = raw_client()
    assert _my_job_ids(client) == set(), "hostile requests left jobs behind"
