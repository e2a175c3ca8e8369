"""The TCP server: read a line, decode it, dispatch it to the service, write the reply.

This is the one place where exceptions become wire replies (the error boundary):

    line --decode--> Request --bind--> arguments --service--> value --encode--> {"return": value}
      |                 |                  |                     |
      |  DecodeError    |  CommandError    |  AllocatorError     |  anything else: a bug,
      v                 v                  v                     v  logged with its traceback
    {"exception": "..."} and the connection stays open          {"exception": "internal error ..."}

Only a line longer than ``max_line_bytes`` closes the connection (after an exception reply),
because the stream cannot be trusted to be framed after it. Cancellation is never swallowed.

Replies on one connection are written in request order (pipelining works); notifications are
written between replies, after the commit that caused them and after the reply of the
request that caused them.

How a request runs. Each connection is a bare `asyncio.Protocol`: no stream reader, no
future per read. ``data_received`` queues the lines and schedules one callback, which binds
each line and calls its handler. A handler returns its reply, or something to wait for:

- an `asyncio.Future` of the reply, which the server answers from the future's callback,
  with no task: the hot v1 changes (create, destroy, power) make their change at once and
  the service's committer resolves the future after the commit;
- any other awaitable (a coroutine), which runs in a task of the server's task group from
  its first step, so that every asyncio tool (``asyncio.timeout``, ``TaskGroup``) works in
  a handler and shutdown cancels and awaits it.

Most reads are answered at once. Later lines of a connection wait in the queue until the
one before them is answered::

    data_received --> queue --call_soon--> bind, call the handler --reply--> write
                                                   |
                                                   +--future--> done callback: reply,
                                                   |            next queued line
                                                   +--awaitable--> task: await, reply,
                                                                   next queued line

The hop through ``call_soon`` keeps notifications causal: the service announces a commit
with ``call_soon`` just before the replies of the requests it held, so the announcement
goes out before any request that a client sends after reading that reply is handled.

A command may take raw bytes after its line (the dispatch extension's image upload): its
handler answers a go-ahead itself and hands a `BodySink` to `Connection.take_body`; the
bytes that follow on the connection go to the sink, not to the line splitter, until it has
taken what it asked for. A handler may also return a `protocol.codec.ReplyWithBody`, whose
raw bytes are written right after its reply line.

Backpressure works both ways: while the client does not read its replies (more than 1 MiB
unsent) no further request of that connection is handled, and while too many request bytes
wait unanswered the server stops reading from that connection. A client that half-closes
still gets the replies to what it sent (a half line is dropped); one that vanishes while its
request waits for a commit does not stop the handler, whose reply is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import socket
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from allocator.errors import AllocatorError, StoreError
from protocol import messages as m
from protocol.codec import (
    decode_request_parts,
    encode_exception,
    encode_notification,
    encode_reply,
)
from protocol.commands import CommandSpec, bind, bind_spec
from protocol.errors import CommandError, DecodeError, UnknownCommandError
from protocol.messages import JobsChanged, MachinesChanged

__all__ = ["MAX_UNREAD_BYTES", "BodySink", "Connection", "Dispatcher", "Server"]

MAX_UNREAD_BYTES = 8 << 20
"""A watcher that leaves more than this many bytes unread is dropped rather than sent more
notifications (replies stop at the write high-water mark; notifications do not wait)."""

log = logging.getLogger("allotment.server")

#: Above this many unsent bytes, wait for the client to read before handling more requests.
_WRITE_HIGH_WATER_BYTES = 1 << 20
#: Above this many bytes of queued request lines, stop reading from the client ...
_READ_HIGH_WATER_BYTES = 1 << 18
#: ... until they are answered down to this many.
_READ_LOW_WATER_BYTES = 1 << 16

_T = TypeVar("_T")

_DATABASE_UNAVAILABLE = "database unavailable, try again"


class Metrics(Protocol):
    """What the server reports; `allocator.metrics.Metrics` implements it."""

    def request_done(self, command: str, outcome: str, seconds: float) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def notification_sent(self, kind: str) -> None: ...


class BodySink(Protocol):
    """Where the raw bytes after a request line go (see `Connection.take_body`)."""

    def feed(self, data: bytes) -> int:
        """Take bytes of the body; return how many were taken (all of them until the end)."""
        ...

    @property
    def is_complete(self) -> bool:
        """Whether the whole body has been taken."""
        ...

    def lost(self) -> None:
        """The connection ended before the whole body came."""
        ...


class BodyOrderError(CommandError):
    """Raw bytes came before the server's go-ahead; the connection is closed."""

    def __init__(self) -> None:
        super().__init__("raw bytes were sent before the server's go-ahead; closing the connection")


MAX_WATCHED_JOBS = 4096
"""The most job ids one connection may watch one by one (``notify_job()`` watches them all)."""
MAX_WATCHED_MACHINES = 256
"""The most machine names one connection may watch one by one."""
MAX_MACHINE_NAME_CHARS = 200
"""The longest machine name worth watching: the store keeps no longer one."""


class WatchLimitError(CommandError):
    """A connection asked to watch more than its share: the watch sets stay as they were."""


@dataclass(eq=False)
class Connection:
    """One client connection and what it watches.

    The watch sets live here, not in the service: they vanish with the connection.
    ``watch_all_jobs``/``watch_all_machines`` mirror the reference: ``notify_job()`` with
    no id watches every job. A job id must be one (7.0 is job 7); the reference took any
    value and watched nothing for it. Each set is bounded
    (`MAX_WATCHED_JOBS`, `MAX_WATCHED_MACHINES`), so that no client grows the server's
    memory by watching ids one at a time; the reference has no bound.
    """

    peer_host: str
    transport: asyncio.Transport
    watch_all_jobs: bool = False
    watched_jobs: set[int] = field(default_factory=set)
    watch_all_machines: bool = False
    watched_machines: set[str] = field(default_factory=set)
    is_watching_runs: bool = False
    """Set by dispatch once the connection asked for a run's progress (`start_run` with
    notify): it then waits for notifications and is never idle."""
    is_closed: bool = False
    body_sink: BodySink | None = field(default=None, repr=False)
    _is_misframed: Callable[[], bool] = field(default=lambda: False, repr=False)
    _end_input: Callable[[], None] = field(default=lambda: None, repr=False)

    def close_after_reply(self) -> None:
        """Read nothing more from this connection and close it once the reply to the line
        being answered is written (a body given up halfway: its rest would read as lines)."""
        self.body_sink = None
        self._end_input()

    def take_body(self, sink: BodySink) -> None:
        """Send the bytes that follow on this connection to `sink` until it is complete.

        Call it from a handler that has just written its go-ahead; a client must wait for
        the go-ahead before it sends the body.

        Raises:
            BodyOrderError: bytes arrived before the go-ahead (the stream is not framed);
                the connection closes after the error reply.
        """
        if self._is_misframed():
            raise BodyOrderError
        self.body_sink = sink

    @property
    def is_watching(self) -> bool:
        return bool(
            self.watch_all_jobs
            or self.watched_jobs
            or self.watch_all_machines
            or self.watched_machines
        )

    def watch(self, arguments: Any) -> None:
        """Apply a notify_*/no_notify_* command to the watch sets."""
        if isinstance(arguments, m.NoNotifyJobArgs):
            if arguments.job_id is None:
                self.watch_all_jobs = False
                self.watched_jobs.clear()
            else:
                self.watched_jobs.discard(arguments.job_id)
        elif isinstance(arguments, m.NotifyJobArgs):
            if arguments.job_id is None:
                self.watch_all_jobs = True
            elif arguments.job_id not in self.watched_jobs:
                if len(self.watched_jobs) >= MAX_WATCHED_JOBS:
                    raise WatchLimitError(
                        f"this connection already watches {MAX_WATCHED_JOBS} jobs, the most "
                        "it may name one by one; notify_job() with no job id watches every job"
                    )
                self.watched_jobs.add(arguments.job_id)
        elif isinstance(arguments, m.NoNotifyMachineArgs):
            if arguments.machine_name is None:
                self.watch_all_machines = False
                self.watched_machines.clear()
            else:
                self.watched_machines.discard(arguments.machine_name)
        elif isinstance(arguments, m.NotifyMachineArgs):
            name = arguments.machine_name
            if name is None:
                self.watch_all_machines = True
            elif name not in self.watched_machines:
                if len(name) > MAX_MACHINE_NAME_CHARS:
                    raise WatchLimitError(
                        f"no machine has a name longer than {MAX_MACHINE_NAME_CHARS} characters"
                    )
                if len(self.watched_machines) >= MAX_WATCHED_MACHINES:
                    raise WatchLimitError(
                        f"this connection already watches {MAX_WATCHED_MACHINES} machines, the "
                        "most it may name one by one; notify_machine() with no name watches "
                        "every machine"
                    )
                self.watched_machines.add(name)

    def notify(self, job_ids: Iterable[int], machine_names: Iterable[str]) -> list[str]:
        """Write the notifications this connection watches; return the kinds written.

        Each notification is one whole line written straight to the transport; replies are
        whole lines too, so the two never interleave within a line.
        """
        if self.is_closed:
            return []
        kinds = []
        jobs = tuple(sorted(j for j in job_ids if self.watch_all_jobs or j in self.watched_jobs))
        if jobs and self.send(encode_notification(JobsChanged.model_construct(jobs_changed=jobs))):
            kinds.append("jobs_changed")
        machines = tuple(
            sorted(
                m for m in machine_names if self.watch_all_machines or m in self.watched_machines
            )
        )
        if machines and self.send(
            encode_notification(MachinesChanged.model_construct(machines_changed=machines))
        ):
            kinds.append("machines_changed")
        return kinds

    def send(self, line: bytes) -> bool:
        """Write a notification line; False if the connection is closed or now dropped.

        A client that leaves more than `MAX_UNREAD_BYTES` unread is dropped at once (with a
        WARNING) rather than sent more: notifications do not wait for the client, so they
        would pile up in this process for good.
        """
        if self.is_closed:
            return False
        if self.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            log.warning(
                "closing a connection from %s: it leaves more than %d bytes unread",
                self.peer_host,
                MAX_UNREAD_BYTES,
            )
            self.is_closed = True  # the server forgets it once the transport says it is lost
            self.transport.abort()
            return False
        self.transport.write(line)
        return True


_WATCH_COMMANDS = frozenset({"notify_job", "no_notify_job", "notify_machine", "no_notify_machine"})


Handler = Callable[[Any, Connection], Any]
"""``handler(arguments, connection)`` -> the reply, or an awaitable of it."""


class RouteLike(Protocol):
    """How a command is served (`allocator.service.Route`)."""

    @property
    def spec(self) -> CommandSpec: ...
    @property
    def handler(self) -> Handler: ...


class Dispatcher(Protocol):
    """The service side of the server: the route of each command name."""

    def route(self, command: str) -> RouteLike | None: ...


class Server:
    """Accepts connections and serves the spalloc protocol on them.

    Args:
        dispatcher: maps command names to handlers (the service).
        max_line_bytes: longest request line accepted; a longer one closes the connection.
        max_connections: connections beyond this are answered with an exception and closed.
        idle_timeout_s: a connection that sent no request for this long, has none in hand,
            takes no body and watches nothing is closed (0: never). A watcher waits for
            notifications by design, so it is never idle.
        metrics: optional request and connection metrics.
    """

    def __init__(
        self,
        dispatcher: Dispatcher | None,
        *,
        max_line_bytes: int = 65536,
        max_connections: int = 4096,
        idle_timeout_s: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._max_line_bytes = max_line_bytes
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._metrics = metrics
        self._connections: dict[Connection, _LineProtocol] = {}
        self._watchers: set[Connection] = set()
        self._task_group: asyncio.TaskGroup | None = None
        self._listener: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"<Server connections={len(self._connections)}>"

    @property
    def connections(self) -> frozenset[Connection]:
        return frozenset(self._connections)

    def broadcast(self, job_ids: Iterable[int], machine_names: Iterable[str]) -> None:
        """Send job/machine change notifications to every connection that watches them."""
        jobs = tuple(job_ids)
        machines = tuple(machine_names)
        if not jobs and not machines:
            return
        for conn in self._watchers:
            for kind in conn.notify(jobs, machines):
                if self._metrics is not None:
                    self._metrics.notification_sent(kind)

    def set_dispatcher(self, dispatcher: Dispatcher) -> None:
        """Answer requests with `dispatcher` (before `serve`, when it was not given)."""
        self._dispatcher = dispatcher

    async def bind(self, host: str, port: int) -> list[tuple[str, int]]:
        """Bind the listening sockets, accepting nothing yet; return the bound addresses.

        Called before anything else starts, so that an address in use or one that cannot
        be bound fails the start before a database is opened.

        Raises:
            OSError: the address cannot be bound (in use, not local, not resolvable).
        """
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: _LineProtocol(self), host, port, backlog=1024, start_serving=False
        )
        return self.addresses

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound addresses (host, port); empty before `bind`."""
        if self._listener is None:
            return []
        return [sock.getsockname()[:2] for sock in self._listener.sockets]

    async def unbind(self) -> None:
        """Close the listening sockets (idempotent)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            await listener.wait_closed()

    async def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        """Serve until cancelled; ``on_ready`` gets the bound addresses once listening.

        Serves on the sockets of `bind`, or binds ``host:port`` first.
        """
        if self._dispatcher is None:
            raise RuntimeError("Server.serve needs a dispatcher (set_dispatcher)")
        if self._listener is None:
            if host is None or port is None:
                raise RuntimeError("Server.serve needs host and port, or bind() first")
            await self.bind(host, port)
        listener = self._listener
        assert listener is not None
        async with asyncio.TaskGroup() as tg:
            self._task_group = tg
            try:
                if self._idle_timeout_s > 0:
                    tg.create_task(self._close_idle(), name="idle connections")
                await listener.start_serving()
                if on_ready is not None:
                    on_ready(self.addresses)
                await asyncio.Future()  # until cancelled
            finally:
                listener.close()
                for line_protocol in list(self._connections.values()):
                    line_protocol.close()
        # Leaving the task group cancelled and awaited the handlers that were still waiting.

    async def _close_idle(self) -> None:
        """Close idle connections (see `idle_timeout_s`), looking a few times per timeout."""
        timeout_s = self._idle_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(max(timeout_s / 4, 0.01), 30.0))
            cutoff = loop.time() - timeout_s
            for conn, line_protocol in list(self._connections.items()):
                if line_protocol.is_idle_since(cutoff):
                    log.info(
                        "closing a connection from %s: no request for %g s",
                        conn.peer_host,
                        timeout_s,
                    )
                    line_protocol.close()

    def _opened(self, conn: Connection, line_protocol: _LineProtocol) -> bool:
        """Register a new connection; False when it is one too many."""
        if len(self._connections) >= self._max_connections:
            return False
        self._connections[conn] = line_protocol
        if self._metrics is not None:
            self._metrics.connection_opened()
        return True

    def _closed(self, conn: Connection) -> None:
        """Forget a connection (once, however many times it is called)."""
        conn.is_closed = True
        self._watchers.discard(conn)
        if self._connections.pop(conn, None) is not None and self._metrics is not None:
            self._metrics.connection_closed()

    def _error_reply(self, exc: Exception, command: str, conn: Connection) -> tuple[bytes, str]:
        """The reply and outcome of a request that raised `exc` (the error boundary)."""
        if isinstance(exc, StoreError):
            # A server-side failure, not the client's: the driver's text (SQL, other users'
            # parameters) goes to the log only, where the store has put it.
            log.warning("%r from %s refused: database unavailable", command, conn.peer_host)
            return encode_exception(_DATABASE_UNAVAILABLE), "error"
        if isinstance(exc, DecodeError | CommandError | AllocatorError):
            return encode_exception(str(exc)), "exception"
        log.error("internal error while handling %r from %s", command, conn.peer_host, exc_info=exc)
        message = f"internal error while handling {command!r}; see the server log"
        return encode_exception(message), "error"


def _is_too_long(line: bytes, max_bytes: int) -> bool:
    """Whether a line (without its LF) is over the limit, which counts the request and not
    its line ending (a CRLF's CR)."""
    return len(line) > max_bytes and (len(line) > max_bytes + 1 or line[-1] != 13)


class _LineProtocol(asyncio.Protocol):
    """One connection: splits lines, answers them strictly in order, applies backpressure."""

    _transport: asyncio.Transport
    _loop: asyncio.AbstractEventLoop
    _conn: Connection

    def __init__(self, server: Server) -> None:
        self._server = server
        assert server._dispatcher is not None, "connections exist only inside serve()"
        self._dispatcher = server._dispatcher
        self._metrics = server._metrics
        self._max_line_bytes = server._max_line_bytes
        self._is_timing_idle = server._idle_timeout_s > 0
        self._partial = b""
        # Request lines not yet answered; None stands for "the line was too long".
        self._pending: deque[bytes | None] = deque()
        self._pending_bytes = 0
        self._is_busy = False  # a suspended handler's task holds the connection's turn
        self._is_run_scheduled = False
        self._is_write_paused = False
        self._is_read_paused = False
        self._is_eof = False
        self._is_input_done = False  # a too-long line was seen, or the connection closes
        self._last_active = 0.0  # the loop's time of the last bytes read or reply written

    def __repr__(self) -> str:
        return (
            f"<_LineProtocol pending={len(self._pending)} busy={self._is_busy}"
            f" write_paused={self._is_write_paused} read_paused={self._is_read_paused}>"
        )

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio.Transport: no isinstance here.
        self._transport = t = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._last_active = self._loop.time()
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = t.get_extra_info("peername")
        self._conn = conn = Connection(
            peer_host=str(peer[0]) if peer else "",
            transport=t,
            _is_misframed=self._is_misframed,
            _end_input=self._end_input,
        )
        if not self._server._opened(conn, self):
            self._is_input_done = True
            conn.is_closed = True
            limit = self._server._max_connections
            t.write(encode_exception(f"too many connections: the limit is {limit}"))
            t.close()
            return
        t.set_write_buffer_limits(high=_WRITE_HIGH_WATER_BYTES)

    def data_received(self, data: bytes) -> None:
        if self._is_input_done:
            return
        self._last_active = self._loop.time()
        sink = self._conn.body_sink
        if sink is not None:
            taken = sink.feed(data)
            if not sink.is_complete:
                return
            self._conn.body_sink = None
            data = data[taken:]
            if not data:
                return
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        partial = lines.pop()
        max_bytes = self._max_line_bytes
        pending = self._pending
        for line in lines:
            if _is_too_long(line, max_bytes):
                self._stop_input()
                break
            # Every line is answered, a blank one too (as malformed): a client that sent
            # a line waits for its reply.
            pending.append(line)
            self._pending_bytes += len(line)
        else:
            if _is_too_long(partial, max_bytes):
                self._stop_input()
            else:
                self._partial = partial
        if pending:
            self._schedule_run()
        if self._pending_bytes > _READ_HIGH_WATER_BYTES and not self._is_read_paused:
            self._is_read_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        # Answer what was sent before the end (a client may half-close and then read);
        # a half line is dropped. True keeps the transport open for the replies. A body
        # cut short can never complete.
        self._lose_body()
        self._is_eof = True
        self._partial = b""
        self._schedule_run()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # A suspended handler goes on to the end (its changes are committed); its reply
        # is dropped.
        self._forget()

    def _forget(self) -> None:
        """Read and answer nothing more; the server forgets the connection (even if its
        body's sink fails on the way)."""
        try:
            self._lose_body()
        finally:
            self._is_input_done = True
            self._pending.clear()
            self._pending_bytes = 0
            self._server._closed(self._conn)

    def _lose_body(self) -> None:
        """A body still coming can never complete: its sink learns so (a sink that fails
        at it is a bug, logged; the connection goes on ending)."""
        sink, self._conn.body_sink = self._conn.body_sink, None
        if sink is not None:
            try:
                sink.lost()
            except Exception:
                log.exception("a body sink failed when its connection ended")

    def is_idle_since(self, cutoff: float) -> bool:
        """Whether nothing came nor was answered since the loop's time `cutoff`, and nothing
        is in hand."""
        conn = self._conn
        return (
            self._last_active <= cutoff
            and not self._is_busy
            and not self._pending
            and not self._is_write_paused
            and conn.body_sink is None
            and not conn.is_watching
            and not conn.is_watching_runs
        )

    def pause_writing(self) -> None:
        self._is_write_paused = True

    def resume_writing(self) -> None:
        self._is_write_paused = False
        self._run()

    # --- requests -----------------------------------------------------------------------

    def _is_misframed(self) -> bool:
        """Whether bytes came after the line being answered, before its go-ahead.

        If so they cannot be told apart from requests: they are dropped, nothing more is
        read, and the connection closes once the reply to that line is written.
        """
        if not (self._pending or self._partial):
            return False
        self._end_input()
        return True

    def _end_input(self) -> None:
        """Read nothing more (what is queued is dropped); close once the reply to the line
        being answered is written."""
        self._pending.clear()
        self._pending_bytes = 0
        self._partial = b""
        self._is_input_done = True
        self._is_eof = True
        if not self._is_read_paused:
            self._is_read_paused = True
            self._transport.pause_reading()

    def close(self) -> None:
        """Close the connection: queued lines are dropped, written replies still go out."""
        self._forget()
        self._transport.close()

    def _stop_input(self) -> None:
        """A too-long line: answer the lines before it, then refuse it and close."""
        self._is_input_done = True
        self._partial = b""
        self._pending.append(None)
        if not self._is_read_paused:
            self._is_read_paused = True
            self._transport.pause_reading()

    def _schedule_run(self) -> None:
        """Answer the queued lines soon: after the callbacks already due (see the module)."""
        if not self._is_run_scheduled:
            self._is_run_scheduled = True
            self._loop.call_soon(self._scheduled_run)

    def _scheduled_run(self) -> None:
        self._is_run_scheduled = False
        self._run()

    def _run(self) -> None:
        """Answer queued lines until one suspends, writing pauses, or none is left."""
        pending = self._pending
        while pending and not self._is_busy and not self._is_write_paused:
            line = pending.popleft()
            if line is None:
                self._transport.write(
                    encode_exception(
                        f"request line longer than {self._max_line_bytes} bytes;"
                        " closing the connection"
                    )
                )
                self.close()
                return
            self._pending_bytes -= len(line)
            self._answer(line)
        if (
            self._is_read_paused
            and not self._is_input_done
            and self._pending_bytes <= _READ_LOW_WATER_BYTES
        ):
            self._is_read_paused = False
            self._transport.resume_reading()
        if self._is_eof and not pending and not self._is_busy and not self._conn.is_closed:
            self.close()

    def _answer(self, line: bytes) -> None:
        """Answer one line, eagerly: a handler that suspends continues in a task."""
        started = time.perf_counter()
        conn = self._conn
        command = "?"
        try:
            command, args, kwargs = decode_request_parts(line, max_bytes=self._max_line_bytes)
            if command in _WATCH_COMMANDS:
                conn.watch(bind(command, args, kwargs))
                if conn.is_watching:
                    self._server._watchers.add(conn)
                else:
                    self._server._watchers.discard(conn)
                value = None
            else:
                route = self._dispatcher.route(command)
                if route is None:
                    error = UnknownCommandError(command)  # names at most 64 characters of it
                    command = "unknown"  # as the metrics label: names sent are unbounded
                    raise error
                value = route.handler(bind_spec(route.spec, args, kwargs), conn)
                if isinstance(value, asyncio.Future):
                    # A reply that waits for a commit: no task, answered when it is settled.
                    self._is_busy = True
                    value.add_done_callback(
                        functools.partial(self._settled, command=command, started=started)
                    )
                    return
                if inspect.isawaitable(value):
                    task_group = self._server._task_group
                    assert task_group is not None, "connections exist only inside serve()"
                    try:
                        task_group.create_task(self._finish(value, command, started))
                    except RuntimeError:
                        # The task group is shutting down: nobody will await the handler.
                        if isinstance(value, types.CoroutineType):
                            value.close()
                        raise
                    self._is_busy = True
                    return
            reply = encode_reply(value)
            outcome = "ok"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply, outcome = self._server._error_reply(exc, command, conn)
        self._reply(reply, command, outcome, started)

    async def _finish(self, awaitable: Awaitable[Any], command: str, started: float) -> None:
        """Wait for a handler's awaitable, answer it, then go on with the queued lines."""
        try:
            value = await awaitable
            reply = encode_reply(value)
            outcome = "ok"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply, outcome = self._server._error_reply(exc, command, self._conn)
        self._is_busy = False
        self._reply(reply, command, outcome, started)
        self._run()

    def _settled(self, future: asyncio.Future[Any], *, command: str, started: float) -> None:
        """Answer a handler's future, then go on with the queued lines."""
        self._is_busy = False
        if future.cancelled():  # the server is stopping: nobody is answered
            return
        try:
            reply = encode_reply(future.result())
            outcome = "ok"
        except Exception as exc:
            reply, outcome = self._server._error_reply(exc, command, self._conn)
        self._reply(reply, command, outcome, started)
        self._run()

    def _reply(self, reply: bytes, command: str, outcome: str, started: float) -> None:
        if not self._conn.is_closed and not self._transport.is_closing():
            self._transport.write(reply)
            if self._is_timing_idle:
                self._last_active = self._loop.time()  # idle from its last reply on
        if self._metrics is not None:
            self._metrics.request_done(command, outcome, time.perf_counter() - started)
