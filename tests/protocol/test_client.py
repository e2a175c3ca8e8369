"""The anyio client against a small scripted server, under both asyncio and trio.

pytest-asyncio runs in auto mode for the project, and in that mode it takes over every
`async def` test, `@pytest.mark.anyio` ones included, and runs them on asyncio whatever
`anyio_backend` says. So each scenario here is an `async def` turned into a plain test by
`on_both_backends`, which runs it with `anyio.run` on the backend of the parametrised
`anyio_backend` fixture; `test_both_backends_really_run` checks that trio really runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio

from protocol.client import AllotmentClient
from protocol.errors import (
    BadReplyError,
    ConnectionLostError,
    ProtocolTimeoutError,
    ServerError,
)
from protocol.messages import JobsChanged, JobStateReply, MachinesChanged, WireBoardCFB


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def on_both_backends(scenario: Callable[[], Awaitable[None]]) -> Callable[[str], None]:
    """Turn an async scenario into a sync test run once per `anyio_backend`."""

    def test(anyio_backend: str) -> None:
        anyio.run(scenario, backend=anyio_backend)

    test.__name__ = test.__qualname__ = getattr(scenario, "__name__", "test")
    test.__doc__ = scenario.__doc__
    return test


# A script maps a command to the lines the server writes when it reads that command. A list
# starting with "HOLD" is held back and written just before the next answer; ["CLOSE"]
# closes the connection instead of answering.
Script = dict[str, list[Any]]


@asynccontextmanager
async def fake_server(
    script: Script, received: list[dict[str, Any]] | None = None
) -> AsyncIterator[int]:
    """Serve `script` on a loopback port; yields the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        from anyio.streams.buffered import BufferedByteReceiveStream

        reader = BufferedByteReceiveStream(stream)
        held: list[bytes] = []
        async with stream:
            while True:
                try:
                    line = await reader.receive_until(b"\n", 1 << 20)
                except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                request = json.loads(line)
                if received is not None:
                    received.append(request)
                items = script.get(request["command"], [{"return": None}])
                if items == ["CLOSE"]:
                    return
                lines = [
                    item if isinstance(item, bytes) else json.dumps(item).encode()
                    for item in items
                    if item != "HOLD"
                ]
                if items and items[0] == "HOLD":
                    held.extend(lines)
                    continue
                await stream.send(b"".join(line + b"\n" for line in [*held, *lines]))
                held.clear()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def connected(
    script: Script, received: list[dict[str, Any]] | None = None, timeout_s: float = 5.0
) -> AsyncIterator[AllotmentClient]:
    async with (
        fake_server(script, received) as port,
        await AllotmentClient.connect("127.0.0.1", port, timeout_s=timeout_s) as client,
    ):
        yield client


_STATE = {
    "state": 3,
    "power": True,
    "keepalive": 60.0,
    "reason": None,
    "start_time": 1.5,
    "keepalivehost": "127.0.0.1",
}


def test_both_backends_really_run(anyio_backend: str) -> None:
    async def scenario() -> str:
        return sniffio.current_async_library()

    assert anyio.run(scenario, backend=anyio_backend) == anyio_backend


@on_both_backends
async def test_typed_replies_are_parsed_into_models() -> None:
    script: Script = {
        "version": [{"return": "6.0.0"}],
        "get_job_state": [{"return": _STATE}],
        "get_board_position": [{"return": [1, 2, 3]}],
        "where_is": [{"return": None}],
    }
    async with connected(script) as client:
        assert await client.version() == "6.0.0"
        state = await client.get_job_state(7)
        assert isinstance(state, JobStateReply)
        assert (state.state, state.keepalive_s, state.keepalivehost) == (3, 60.0, "127.0.0.1")
        assert await client.get_board_position("m", 0, 0, 1) == WireBoardCFB(1, 2, 3)
        assert await client.where_is(job_id=7, chip_x=0, chip_y=0) is None


@on_both_backends
async def test_requests_carry_args_and_only_given_options() -> None:
    received: list[dict[str, Any]] = []
    async with connected({"create_job": [{"return": 12}]}, received) as client:
        assert await client.create_job(2, 1, owner="me", tags=["fast"]) == 12
        await client.destroy_job(12, "done")
        await client.notify_job()
    assert received == [
        {
            "command": "create_job",
            "args": [2, 1],
            "kwargs": {"owner": "me", "keepalive": 60.0, "tags": ["fast"]},
        },
        {"command": "destroy_job", "args": [12], "kwargs": {"reason": "done"}},
        {"command": "notify_job", "args": [None], "kwargs": {}},
    ]


@on_both_backends
async def test_notifications_before_a_reply_are_queued_and_the_reply_still_returned() -> None:
    script: Script = {
        "job_keepalive": [{"jobs_changed": [3, 4]}, {"machines_changed": ["m"]}, {"return": None}]
    }
    async with connected(script) as client:
        await client.job_keepalive(3)
        assert await client.receive_notification() == JobsChanged(jobs_changed=(3, 4))
        async for notification in client:
            assert notification == MachinesChanged(machines_changed=("m",))
            break


@on_both_backends
async def test_exception_reply_raises_server_error_and_connection_survives() -> None:
    script: Script = {
        "get_job_state": [{"exception": "get_job_state() missing 1 required positional argument"}],
        "version": [{"return": "6.0.0"}],
    }
    async with connected(script) as client:
        with pytest.raises(ServerError, match="missing 1 required") as info:
            await client.call("get_job_state")
        assert info.value.message.startswith("get_job_state()")
        assert await client.version() == "6.0.0"


@on_both_backends
async def test_late_reply_after_timeout_is_dropped_and_pairing_kept() -> None:
    # The server holds the reply to "list_jobs" and sends it just before the next reply.
    script: Script = {"list_jobs": ["HOLD", {"return": []}], "version": [{"return": "6.0.0"}]}
    async with connected(script) as client:
        with pytest.raises(ProtocolTimeoutError, match="'list_jobs'"):
            await client.call("list_jobs", timeout_s=0.05)
        assert await client.version() == "6.0.0"


@on_both_backends
async def test_pipelined_calls_from_many_tasks_get_their_own_replies() -> None:
    script: Script = {"get_job_state": [{"jobs_changed": [1]}, {"return": _STATE}]}
    results: dict[int, Any] = {}
    async with connected(script) as client:

        async def one(job_id: int) -> None:
            results[job_id] = await client.call("get_job_state", job_id)

        async with anyio.create_task_group() as tg:
            for job_id in range(20):
                tg.start_soon(one, job_id)
        assert sorted(results) == list(range(20))
        assert all(value == _STATE for value in results.values())
        assert await client.receive_notification(timeout_s=1.0) == JobsChanged(jobs_changed=(1,))


@on_both_backends
async def test_server_closing_raises_connection_lost_then_every_call_does() -> None:
    async with connected({"list_jobs": ["CLOSE"]}) as client:
        with pytest.raises(ConnectionLostError, match="closed"):
            await client.list_jobs()
        with pytest.raises(ConnectionLostError):
            await client.version()


@on_both_backends
async def test_garbage_from_server_is_a_bad_reply() -> None:
    async with connected({"version": [b"[1, 2]"]}) as client:
        with pytest.raises(BadReplyError, match="json list"):
            await client.version()
        with pytest.raises(ConnectionLostError, match="json list"):
            await client.version()


@on_both_backends
async def test_reply_not_matching_model_is_a_bad_reply() -> None:
    async with connected({"get_job_state": [{"return": {"state": 1}}]}) as client:
        with pytest.raises(BadReplyError, match="get_job_state"):
            await client.get_job_state(1)


@on_both_backends
async def test_connect_refused_is_connection_lost() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    with pytest.raises(ConnectionLostError, match=f"127.0.0.1:{port}"):
        await AllotmentClient.connect("127.0.0.1", port, timeout_s=5.0)


@on_both_backends
async def test_receive_notification_times_out() -> None:
    async with connected({}) as client:
        with pytest.raises(ProtocolTimeoutError, match="notification"):
            await client.receive_notification(timeout_s=0.05)


@on_both_backends
async def test_closed_client_ends_notification_iteration_and_refuses_calls() -> None:
    async with connected({}) as client:
        await client.aclose()
        assert [n async for n in client] == []
        with pytest.raises(ConnectionLostError, match="closed by the client"):
            await client.version()
        assert "closed" in repr(client)
