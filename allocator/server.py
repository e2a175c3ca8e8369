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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import protocol.admin  # noqa: F401 - registers the operator commands with the command table
from allocator.errors import AllocatorError
from protocol import messages as m
from protocol.codec import decode_request, encode_exception, encode_notification, encode_reply
from protocol.commands import bind
from protocol.errors import CommandError, DecodeError
from protocol.messages import JobsChanged, MachinesChanged

__all__ = ["Connection", "Dispatcher", "Server"]

log = logging.getLogger("allotment.server")

_READ_CHUNK_BYTES = 65536
#: Above this many unsent bytes, wait for the client to read before handling more requests.
_WRITE_HIGH_WATER_BYTES = 1 << 20


class Metrics(Protocol):
    """What the server reports; `allocator.metrics.Metrics` implements it."""

    def request_done(self, command: str, outcome: str, seconds: float) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def notification_sent(self, kind: str) -> None: ...


@dataclass(eq=False)
class Connection:
    """One client connection and what it watches.

    The watch sets live here, not in the service: they vanish with the connection.
    ``watch_all_jobs``/``watch_all_machines`` mirror the reference: ``notify_job()`` with
    no id watches every job; ids are not validated.
    """

    peer_host: str
    writer: asyncio.StreamWriter
    watch_all_jobs: bool = False
    watched_jobs: set[int] = field(default_factory=set)
    watch_all_machines: bool = False
    watched_machines: set[str] = field(default_factory=set)
    is_closed: bool = False

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
            else:
                self.watched_jobs.add(arguments.job_id)
        elif isinstance(arguments, m.NoNotifyMachineArgs):
            if arguments.machine_name is None:
                self.watch_all_machines = False
                self.watched_machines.clear()
            else:
                self.watched_machines.discard(arguments.machine_name)
        elif isinstance(arguments, m.NotifyMachineArgs):
            if arguments.machine_name is None:
                self.watch_all_machines = True
            else:
                self.watched_machines.add(arguments.machine_name)

    def notify(self, job_ids: Iterable[int], machine_names: Iterable[str]) -> list[str]:
        """Write the notifications this connection watches; return the kinds written."""
        if self.is_closed:
            return []
        kinds = []
        jobs = tuple(sorted(j for j in job_ids if self.watch_all_jobs or j in self.watched_jobs))
        if jobs:
            self.writer.write(encode_notification(JobsChanged.model_construct(jobs_changed=jobs)))
            kinds.append("jobs_changed")
        machines = tuple(
            sorted(
                m for m in machine_names if self.watch_all_machines or m in self.watched_machines
            )
        )
        if machines:
            self.writer.write(
                encode_notification(MachinesChanged.model_construct(machines_changed=machines))
            )
            kinds.append("machines_changed")
        return kinds


_WATCH_COMMANDS = frozenset({"notify_job", "no_notify_job", "notify_machine", "no_notify_machine"})


Handler = Callable[[Any, Connection], Awaitable[Any]]


class Dispatcher(Protocol):
    """The service side of the server: a handler per command name."""

    def handler_for(self, command: str) -> Handler | None: ...


class Server:
    """Accepts connections and serves the spalloc protocol on them.

    Args:
        dispatcher: maps command names to handlers (the service).
        max_line_bytes: longest request line accepted; a longer one closes the connection.
        max_connections: connections beyond this are answered with an exception and closed.
        metrics: optional request and connection metrics.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        max_line_bytes: int = 65536,
        max_connections: int = 4096,
        metrics: Metrics | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._max_line_bytes = max_line_bytes
        self._max_connections = max_connections
        self._metrics = metrics
        self._connections: set[Connection] = set()
        self._watchers: set[Connection] = set()
        self._task_group: asyncio.TaskGroup | None = None

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

    async def serve(
        self,
        host: str,
        port: int,
        *,
        on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        """Serve until cancelled; ``on_ready`` gets the bound addresses once listening."""
        async with asyncio.TaskGroup() as tg:
            self._task_group = tg
            server = await asyncio.start_server(
                self._accept, host, port, limit=self._max_line_bytes, backlog=1024
            )
            try:
                addresses = [sock.getsockname()[:2] for sock in server.sockets]
                if on_ready is not None:
                    on_ready(addresses)
                await asyncio.Future()  # until cancelled
            finally:
                server.close()
                for conn in list(self._connections):
                    conn.writer.close()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called by asyncio for each new connection; the handler task joins our task group
        # so that shutdown cancels and awaits every connection.
        assert self._task_group is not None
        self._task_group.create_task(self._handle(reader, writer))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = Connection(peer_host=str(peer[0]) if peer else "", writer=writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self._connections) >= self._max_connections:
            writer.write(
                encode_exception(f"too many connections: the limit is {self._max_connections}")
            )
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        self._connections.add(conn)
        if self._metrics is not None:
            self._metrics.connection_opened()
        try:
            await self._serve_connection(reader, conn)
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            conn.is_closed = True
            self._connections.discard(conn)
            self._watchers.discard(conn)
            if self._metrics is not None:
                self._metrics.connection_closed()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, conn: Connection) -> None:
        buffer = b""
        while True:
            chunk = await reader.read(_READ_CHUNK_BYTES)
            if not chunk:
                return  # EOF; a half line left behind is simply dropped
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if len(line) > self._max_line_bytes:
                    await self._refuse_long_line(conn)
                    return
                if line.strip():
                    await self._answer(line, conn)
            if len(buffer) > self._max_line_bytes:
                await self._refuse_long_line(conn)
                return
            if conn.writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER_BYTES:
                await conn.writer.drain()

    async def _refuse_long_line(self, conn: Connection) -> None:
        conn.writer.write(
            encode_exception(
                f"request line longer than {self._max_line_bytes} bytes; closing the connection"
            )
        )
        with contextlib.suppress(OSError):
            await conn.writer.drain()

    async def _answer(self, line: bytes, conn: Connection) -> None:
        started = time.perf_counter()
        command = "?"
        outcome = "exception"
        try:
            request = decode_request(line, max_bytes=self._max_line_bytes)
            command = request.command
            if command in _WATCH_COMMANDS:
                conn.watch(bind(command, request.args, request.kwargs))
                if conn.is_watching:
                    self._watchers.add(conn)
                else:
                    self._watchers.discard(conn)
                value = None
            else:
                handler = self._dispatcher.handler_for(command)
                if handler is None:
                    command = "unknown"
                    raise CommandError(f"unknown command {request.command!r}")
                value = await handler(bind(request.command, request.args, request.kwargs), conn)
            reply = encode_reply(value)
            outcome = "ok"
        except (DecodeError, CommandError, AllocatorError) as exc:
            reply = encode_exception(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error while handling %r from %s", command, conn.peer_host)
            reply = encode_exception(
                f"internal error while handling {command!r}; see the server log"
            )
            outcome = "error"
        if not conn.is_closed:
            conn.writer.write(reply)
        if self._metrics is not None:
            self._metrics.request_done(command, outcome, time.perf_counter() - started)
