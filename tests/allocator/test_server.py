"""The TCP server over real sockets, with a scripted dispatcher instead of the service.

Each scenario runs on asyncio's own loop and on uvloop (the server's loop in production,
whose transports are no subclasses of `asyncio.Transport`). No sleeps: a handler tells the
test when it runs through an event, and a "commit" is a future the test resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from allocator.errors import AllocatorError
from allocator.server import (
    MAX_MACHINE_NAME_CHARS,
    MAX_WATCHED_JOBS,
    MAX_WATCHED_MACHINES,
    Connection,
    Handler,
    Server,
    _LineProtocol,
)
from allocator.service import Route
from protocol.codec import encode_reply
from protocol.commands import get_spec
from protocol.messages import GetJobStateArgs

Scenario = Callable[[], Coroutine[Any, Any, None]]
TIMEOUT_S = 10.0
BIG_REPLY_BYTES = 32 * 1024 * 1024  # far beyond any socket buffer and the 1 MiB high water


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Run a scenario to the end on a fresh loop of the parametrised kind."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def run_scenario(scenario: Scenario) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(scenario(), TIMEOUT_S))

    return run_scenario


class FakeService:
    """A dispatcher whose handlers the test writes; it records the commands as they start."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.started: list[str] = []

    def route(self, command: str) -> Route | None:
        handler = self.handlers.get(command)
        if handler is None:
            return None

        def recording(arguments: Any, conn: Connection) -> Any:
            self.started.append(command)
            return handler(arguments, conn)

        return Route(get_spec(command), recording, "test")


class FakeMetrics:
    """Records what the server reports; `closed` is set when a connection closes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.n_open = 0
        self.closed = asyncio.Event()

    def request_done(self, command: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((command, outcome))

    def connection_opened(self) -> None:
        self.n_open += 1

    def connection_closed(self) -> None:
        self.n_open -= 1
        self.closed.set()

    def notification_sent(self, kind: str) -> None:
        pass


def _version(arguments: Any, conn: Connection) -> str:
    return "1.2.3"


@contextlib.asynccontextmanager
async def serving(service: FakeService, **options: Any) -> AsyncIterator[int]:
    """A server on an ephemeral port for the duration; yields the port."""
    server = Server(service, **options)
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        serve = tg.create_task(server.serve("127.0.0.1", 0, on_ready=ready.set_result))
        try:
            yield (await ready)[0][1]
        finally:
            serve.cancel()


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2 * BIG_REPLY_BYTES)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _line(command: str, *args: Any) -> bytes:
    return json.dumps({"command": command, "args": list(args)}).encode() + b"\n"


async def _reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readline()
    assert line, "the server closed the connection"
    return json.loads(line)


def test_names_a_client_makes_up_come_back_shortened(run: Callable[[Scenario], None]) -> None:
    # A reply never repeats an unbounded name in full (a 64 KiB command name was answered
    # with 150 KB).
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        name = "\ufffe" * 10_000  # 60 KB as JSON escapes it, under the line limit
        request = {"command": "version", "args": [], "kwargs": {"k" * 20_000: 1}}
        async with serving(service) as port, connected(port) as (reader, writer):
            writer.write(_line(name) + json.dumps(request).encode() + b"\n")
            unknown, keyword = [await _reply(reader) for _ in range(2)]
        assert unknown["exception"].startswith("unknown command '")
        assert len(unknown["exception"]) < 500
        assert keyword["exception"].startswith("version() got an unexpected keyword argument 'kkk")
        assert len(keyword["exception"]) < 200

    run(scenario)


def test_pipelined_requests_are_answered_in_order(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version

        async def state(arguments: GetJobStateArgs, conn: Connection) -> dict[str, Any]:
            if arguments.job_id == 2:
                await asyncio.sleep(0)  # suspends once: the rest runs in a task
            return {"job_id": arguments.job_id}

        service.handlers["get_job_state"] = state
        async with serving(service) as port, connected(port) as (reader, writer):
            writer.write(
                b"\n  \r\n"
                + _line("get_job_state", 1)
                + _line("get_job_state", 2)
                + _line("launch_missiles")
                + b"{not json\n"
                + _line("version")
                + _line("get_job_state", 3)
            )
            replies = [await _reply(reader) for _ in range(8)]
        # Blank lines are malformed like any other: answered, never left waiting.
        blank, whitespace = replies[:2]
        assert "not valid json" in blank["exception"]
        assert "not valid json" in whitespace["exception"]
        replies = replies[2:]
        assert replies == [
            {"return": {"job_id": 1}},
            {"return": {"job_id": 2}},
            {"exception": "unknown command 'launch_missiles'"},
            replies[3],
            {"return": "1.2.3"},
            {"return": {"job_id": 3}},
        ]
        assert "json" in replies[3]["exception"]

    run(scenario)


def test_a_read_waits_for_the_commit_of_the_request_before_it(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        destroying = asyncio.Event()

        async def destroy(arguments: Any, conn: Connection) -> None:
            destroying.set()
            await commit

        async def state(arguments: Any, conn: Connection) -> str:
            return "destroyed" if commit.done() else "alive"

        service.handlers["destroy_job"] = destroy
        service.handlers["get_job_state"] = state
        async with serving(service) as port, connected(port) as (reader, writer):
            writer.write(_line("destroy_job", 1) + _line("get_job_state", 1))
            await destroying.wait()
            assert service.started == ["destroy_job"], "a read jumped ahead of a write"
            # Other connections are not held up by this one's commit.
            async with connected(port) as (other_reader, other_writer):
                other_writer.write(_line("version"))
                assert await _reply(other_reader) == {"return": "1.2.3"}
            commit.set_result(None)
            assert await _reply(reader) == {"return": None}
            assert await _reply(reader) == {"return": "destroyed"}
        assert service.started == ["destroy_job", "version", "get_job_state"]

    run(scenario)


def test_reads_are_answered_without_a_task_and_awaitables_run_in_one(
    run: Callable[[Scenario], None],
) -> None:
    # A handler that returns its reply is answered straight from the protocol's callback;
    # one that returns an awaitable has it run in a task of the server's task group from
    # its first step, so the ordinary asyncio tools work in it (asyncio.timeout needs the
    # task it would cancel).
    async def scenario() -> None:
        service = FakeService()
        tasks: list[asyncio.Task[Any] | None] = []

        def state(arguments: GetJobStateArgs, conn: Connection) -> Any:
            tasks.append(asyncio.current_task())
            return arguments.job_id if arguments.job_id != 2 else waiting(arguments.job_id)

        async def waiting(job_id: int) -> int:
            tasks.append(asyncio.current_task())
            async with asyncio.timeout(5):
                await asyncio.sleep(0)
            tasks.append(asyncio.current_task())
            return job_id

        service.handlers["get_job_state"] = state
        async with serving(service) as port, connected(port) as (reader, writer):
            writer.write(_line("get_job_state", 1) + _line("get_job_state", 2))
            assert [await _reply(reader), await _reply(reader)] == [
                {"return": 1},
                {"return": 2},
            ]
        assert tasks[:2] == [None, None]
        assert isinstance(tasks[2], asyncio.Task)
        assert tasks[3] is tasks[2]

    run(scenario)


@pytest.mark.parametrize("terminated", [True, False], ids=["line", "unterminated"])
def test_a_line_over_the_limit_is_refused_and_the_connection_closed(
    run: Callable[[Scenario], None], terminated: bool
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        async with serving(service, max_line_bytes=100) as port:
            async with connected(port) as (reader, writer):
                long_line = b"x" * 101 + (b"\n" + _line("version") if terminated else b"")
                writer.write(_line("version") + long_line)
                assert await _reply(reader) == {"return": "1.2.3"}
                assert await _reply(reader) == {
                    "exception": "request line longer than 100 bytes; closing the connection"
                }
                assert await reader.read() == b""  # the version after it was not answered
            # A line of exactly the limit is fine.
            async with connected(port) as (reader, writer):
                writer.write(b'{"command": "version"}'.ljust(100) + b"\n")
                assert await _reply(reader) == {"return": "1.2.3"}
                # So is one ended by CRLF.
                writer.write(b'{"command": "version"}'.ljust(100) + b"\r\n")
                assert await _reply(reader) == {"return": "1.2.3"}
        assert service.started == ["version"] * 3

    run(scenario)


async def test_a_crlf_line_of_the_limit_read_apart_from_its_lf_is_answered() -> None:
    service = FakeService()
    service.handlers["version"] = _version
    protocol = _LineProtocol(Server(service, max_line_bytes=100))
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b'{"command": "version"}'.ljust(100) + b"\r")
    protocol.data_received(b"\n")
    protocol.data_received(b'{"command": "version"}'.ljust(101) + b"\r")  # one byte over
    await asyncio.sleep(0)  # the scheduled run answers
    assert transport.written == [
        b'{"return": "1.2.3"}\n',
        b'{"exception": "request line longer than 100 bytes; closing the connection"}\n',
    ]
    assert transport.closed


def test_no_request_is_handled_while_the_client_does_not_read(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        big_sent = asyncio.Event()

        async def machines(arguments: Any, conn: Connection) -> str:
            big_sent.set()
            return "m" * BIG_REPLY_BYTES

        service.handlers["list_machines"] = machines
        async with serving(service) as port, connected(port) as (reader, writer):
            # One packet: without backpressure both would be answered in one callback.
            writer.write(_line("list_machines") + _line("version"))
            await big_sent.wait()
            assert service.started == ["list_machines"]
            big = await reader.readexactly(len(encode_reply("m" * BIG_REPLY_BYTES)))
            assert big.endswith(b'm"}\n')
            assert await _reply(reader) == {"return": "1.2.3"}
        assert service.started == ["list_machines", "version"]

    run(scenario)


def test_a_client_that_vanishes_mid_request_does_no_harm(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        metrics = FakeMetrics()
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        destroying, destroyed = asyncio.Event(), asyncio.Event()

        async def destroy(arguments: Any, conn: Connection) -> None:
            destroying.set()
            await commit
            destroyed.set()

        service.handlers["destroy_job"] = destroy
        async with serving(service, metrics=metrics) as port:
            async with connected(port) as (_, writer):
                writer.write(_line("destroy_job", 1) + _line("version"))
                await destroying.wait()
                # Gone for good (a reset), not half-closed: a FIN alone could mean the
                # client still reads, and its queued requests would be answered.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await metrics.closed.wait()
            commit.set_result(None)
            await destroyed.wait()
            async with connected(port) as (reader, writer):
                writer.write(_line("version"))
                assert await _reply(reader) == {"return": "1.2.3"}
        # The handler finished (its reply dropped); the queued version was never run.
        assert service.started == ["destroy_job", "version"]
        assert metrics.requests == [("destroy_job", "ok"), ("version", "ok")]
        assert metrics.n_open == 0

    run(scenario)


def test_errors_become_replies_and_the_connection_stays(
    run: Callable[[Scenario], None], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        metrics = FakeMetrics()

        async def state(arguments: Any, conn: Connection) -> None:
            raise AllocatorError("job 7 does not exist")

        async def destroy(arguments: Any, conn: Connection) -> None:
            await asyncio.sleep(0)
            raise RuntimeError("a bug")

        service.handlers["get_job_state"] = state
        service.handlers["destroy_job"] = destroy
        async with (
            serving(service, metrics=metrics) as port,
            connected(port) as (reader, writer),
        ):
            writer.write(_line("get_job_state", 7) + _line("destroy_job", 7) + _line("version"))
            assert await _reply(reader) == {"exception": "job 7 does not exist"}
            assert await _reply(reader) == {
                "exception": "internal error while handling 'destroy_job'; see the server log"
            }
            assert await _reply(reader) == {"return": "1.2.3"}
        assert metrics.requests == [
            ("get_job_state", "exception"),
            ("destroy_job", "error"),
            ("version", "ok"),
        ]

    with caplog.at_level(logging.ERROR, logger="allotment.server"):
        run(scenario)
    (record,) = caplog.records
    assert "'destroy_job'" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_watch_sets_are_bounded_and_a_refused_watch_changes_nothing(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        async with serving(service) as port, connected(port) as (reader, writer):
            ids = range(1, MAX_WATCHED_JOBS + 1)
            writer.write(b"".join(_line("notify_job", job_id) for job_id in ids))
            for _ in ids:
                assert await _reply(reader) == {"return": None}
            writer.write(_line("notify_job", 1) + _line("notify_job", MAX_WATCHED_JOBS + 1))
            assert await _reply(reader) == {"return": None}  # already watched: no growth
            refused = await _reply(reader)
            assert f"already watches {MAX_WATCHED_JOBS} jobs" in refused["exception"]
            assert "notify_job() with no job id" in refused["exception"]
            # Unwatching one makes room again; watching every job is always allowed.
            writer.write(
                _line("no_notify_job", 1)
                + _line("notify_job", MAX_WATCHED_JOBS + 1)
                + _line("notify_job")
            )
            assert [await _reply(reader) for _ in range(3)] == [{"return": None}] * 3

            names = [f"m{i}" for i in range(MAX_WATCHED_MACHINES)]
            writer.write(b"".join(_line("notify_machine", name) for name in names))
            for _ in names:
                assert await _reply(reader) == {"return": None}
            writer.write(
                _line("notify_machine", "one more")
                + _line("notify_machine", "x" * (MAX_MACHINE_NAME_CHARS + 1))
                + _line("version")
            )
            assert "already watches" in (await _reply(reader))["exception"]
            too_long = (await _reply(reader))["exception"]
            assert too_long == (
                f"no machine has a name longer than {MAX_MACHINE_NAME_CHARS} characters"
            )
            assert await _reply(reader) == {"return": "1.2.3"}  # the connection stays

    run(scenario)


def test_idle_connections_are_closed_but_not_watchers_or_busy_ones(
    run: Callable[[Scenario], None], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        released = asyncio.Event()

        async def slow(arguments: Any, conn: Connection) -> str:
            await released.wait()
            return "done"

        service.handlers["get_job_state"] = slow
        async with (
            serving(service, idle_timeout_s=0.2) as port,
            connected(port) as (idle, _),
            connected(port) as (watcher, watcher_writer),
            connected(port) as (busy, busy_writer),
        ):
            watcher_writer.write(_line("notify_job"))
            assert await _reply(watcher) == {"return": None}
            busy_writer.write(_line("get_job_state", 1))  # its reply waits for `released`
            assert await asyncio.wait_for(idle.read(), TIMEOUT_S) == b""  # closed by the server
            released.set()
            assert await _reply(busy) == {"return": "done"}
            # Idle from its reply on, not from its request: it has the whole timeout again.
            await asyncio.sleep(0.1)
            busy_writer.write(_line("version"))
            assert await _reply(busy) == {"return": "1.2.3"}
            watcher_writer.write(_line("version"))
            assert await _reply(watcher) == {"return": "1.2.3"}  # watching: never idle

    with caplog.at_level(logging.INFO, logger="allotment.server"):
        run(scenario)
    assert any("no request for 0.2 s" in r.getMessage() for r in caplog.records)


def test_shutdown_cancels_a_waiting_handler_where_it_waits(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        service = FakeService()
        waiting = asyncio.Event()
        seen: list[str] = []

        async def destroy(arguments: Any, conn: Connection) -> None:
            waiting.set()
            try:
                await asyncio.get_running_loop().create_future()  # a commit that never ends
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        service.handlers["destroy_job"] = destroy
        async with serving(service) as port, connected(port) as (reader, writer):
            writer.write(_line("destroy_job", 1))
            await waiting.wait()
        # Leaving `serving` cancelled serve(), which cancelled and awaited the handler.
        assert seen == ["cancelled"]
        assert await reader.read() == b""

    run(scenario)


def test_connections_beyond_the_limit_are_refused(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version
        async with serving(service, max_connections=1) as port, connected(port) as (r, w):
            w.write(_line("version"))
            assert await _reply(r) == {"return": "1.2.3"}
            async with connected(port) as (refused, _):
                assert await _reply(refused) == {
                    "exception": "too many connections: the limit is 1"
                }
                assert await refused.read() == b""
            w.write(_line("version"))
            assert await _reply(r) == {"return": "1.2.3"}

    run(scenario)


def test_a_client_that_stops_sending_still_gets_its_replies(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        service = FakeService()
        service.handlers["version"] = _version

        async def destroy(arguments: Any, conn: Connection) -> None:
            await asyncio.sleep(0)

        service.handlers["destroy_job"] = destroy
        async with serving(service) as port, connected(port) as (reader, writer):
            writer.write(_line("destroy_job", 1) + _line("version") + b'{"command": "vers')
            writer.write_eof()
            assert await _reply(reader) == {"return": None}
            assert await _reply(reader) == {"return": "1.2.3"}
            assert await reader.read() == b""  # the half line was dropped
        assert service.started == ["destroy_job", "version"]

    run(scenario)


class FakeTransport:
    """Just enough of a transport to watch the protocol pause and resume reading."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.is_reading = True
        self.closed = False
        self.aborted = False
        self.unsent = 0  # what the client has not read

    def get_extra_info(self, name: str) -> Any:
        return ("192.0.2.1", 4242) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.is_reading = False

    def resume_reading(self) -> None:
        self.is_reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.unsent


async def test_reading_pauses_while_too_many_requests_wait() -> None:
    service = FakeService()
    service.handlers["version"] = _version
    protocol = _LineProtocol(Server(service))
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    assert protocol._conn.peer_host == "192.0.2.1"

    protocol.pause_writing()  # the client does not read its replies
    protocol.data_received(_line("version") * 20_000)  # about 470 KiB of requests
    await asyncio.sleep(0)  # the scheduled run finds writing paused
    assert transport.written == []
    assert not transport.is_reading
    protocol.resume_writing()
    assert len(transport.written) == 20_000
    assert set(transport.written) == {b'{"return": "1.2.3"}\n'}
    assert transport.is_reading
    protocol.eof_received()
    await asyncio.sleep(0)
    assert transport.is_closing()


async def test_a_watcher_that_reads_nothing_is_dropped_not_fed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = FakeService()
    server = Server(service)
    deaf, reader = FakeTransport(), FakeTransport()
    protocols = [_LineProtocol(server), _LineProtocol(server)]
    for protocol, transport in zip(protocols, (deaf, reader), strict=True):
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(_line("notify_job"))
    await asyncio.sleep(0)  # the scheduled runs answer the notify_job lines
    assert deaf.written == reader.written == [b'{"return": null}\n']
    deaf.unsent = 9 << 20  # more unread than a watcher may leave
    with caplog.at_level(logging.WARNING, logger="allotment.server"):
        server.broadcast([7], [])
    assert deaf.aborted
    assert deaf.written == [b'{"return": null}\n']  # nothing more was queued for it
    assert reader.written[-1] == b'{"jobs_changed": [7]}\n'
    assert "leaves more than" in caplog.text
    server.broadcast([8], [])  # dropped: nothing more for it, even before it is gone
    assert deaf.written == [b'{"return": null}\n']
    assert reader.written[-1] == b'{"jobs_changed": [8]}\n'
    protocols[0].connection_lost(None)  # as the aborted transport reports
    assert [c.transport for c in server.connections] == [reader]
