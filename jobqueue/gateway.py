"""The allocation server as a batch job's script sees it: its own allocations only.

A job's sandbox has a network of its own, with no route to the host's services (the
allocation server, the database, the MQTT broker, the batch API). Inside it
`jobqueue/relay.py` listens where `spynnaker.cfg` says the allocation server is and relays
each connection over a Unix socket bound into the sandbox to this gateway, in the runner,
which speaks to the real server on the job's behalf::

    script --TCP 127.0.0.1:port--> relay (sandbox) --Unix socket--> Gateway (runner)
        --TCP--> allocation server

Per batch job:

- `create_job` is sent with the batch job's owner (`<user> nmpi-job-<id>`), whatever owner
  the script gave, so every allocation it makes is charged to the job and destroyed when
  the job ends (`jobqueue.usage`);
- the commands that change a spalloc job, keep it alive or use its boards (`destroy_job`,
  `job_keepalive`, `get_job_state` and `get_job_machine_info`, which count as keepalives,
  `power_on_job_boards`, `power_off_job_boards`, `load_image`, `start_run`, `stop_run`,
  `fetch_results`) are passed on only for the jobs it created through the gateway and the
  standby it was handed; for any other job the gateway answers
  ``job N is not an allocation of batch job M``;
- reads (`list_jobs`, `list_machines`, `where_is`, the board positions, `version`,
  `run_status`) and notifications go through;
- operator commands and commands it does not know are refused;
- at most `MAX_CONNECTIONS_PER_JOB` connections at once.

Every request line is decoded and bound by the code the server uses (`protocol.codec`,
`protocol.commands`) and sent on re-encoded from what was checked (compact, UTF-8), so the
server can never read a request differently from the gateway; one that would be longer
than a line may be once re-encoded is refused. A malformed request is answered by the
gateway with the server's own message. Raw bytes pass as they are: `load_image`'s body
after its go-ahead, `fetch_results`' bytes after its reply. Replies keep the order of the
requests, the gateway's own refusals included.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.codec import MAX_LINE_BYTES, decode_request_parts, encode_exception
from protocol.commands import bind, check_job_id, command_table
from protocol.dispatch import DIGEST_TRAILER_BYTES
from protocol.errors import CommandError, DecodeError, UnknownCommandError

__all__ = ["Gateway"]

log = logging.getLogger("allotment.batch")

_CHANGING = frozenset(
    {
        "destroy_job",
        "job_keepalive",
        # reads, but they count as the job's keepalive (spalloc's rule): another user's job
        # polled this way would never expire
        "get_job_state",
        "get_job_machine_info",
        "power_on_job_boards",
        "power_off_job_boards",
        "load_image",
        "start_run",
        "stop_run",
        "fetch_results",
    }
)
"""Commands on a spalloc job that only the batch job holding it may send."""

_READS = frozenset(
    {
        "version",
        "allotment_version",
        "list_jobs",
        "list_machines",
        "where_is",
        "get_board_position",
        "get_board_at_position",
        "run_status",
        "notify_job",
        "no_notify_job",
        "notify_machine",
        "no_notify_machine",
    }
)
"""Commands any batch job may send as they are."""

_REPLY_LINE_LIMIT = 64 * 1024 * 1024
"""The longest reply line relayed (a `list_jobs` of a very busy machine stays far under)."""
_CHUNK = 256 * 1024
MAX_CONNECTIONS_PER_JOB = 64
"""Connections one batch job may hold open at once (a PyNN script needs one or two): the
allocation server's own limit is for everyone, and no job may use it up."""
_OPEN_TIMEOUT_S = 10.0


@dataclass
class _Gate:
    """One batch job's side of the gateway."""

    batch_job_id: int
    owner: str
    allowed: set[int]
    created: set[int] = field(default_factory=set)
    """The spalloc jobs it created through the gateway (`allowed` less a standby)."""
    server: asyncio.AbstractServer | None = None
    sessions: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass
class _Pending:
    """A request whose reply is still to come: from the server, or the gateway's own."""

    command: str
    local_reply: bytes | None = None
    has_digest: bool = True
    """load_image: whether its header gave the sha256 (else a trailer follows the body)."""
    is_accepting: bool = False
    """load_image: its go-ahead came; the reply after the body is still to come."""
    go_ahead: asyncio.Future[int | None] | None = None
    """load_image: set to the body's byte count at the go-ahead, None if refused."""


class Gateway:
    """The runner's gateway between jobs' sandboxes and the allocation server.

    Runs its own event loop on a thread of its own (the runner is threaded); `open` and
    `close` are called from the runner's threads.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._gates: dict[int, _Gate] = {}

    def __repr__(self) -> str:
        return f"<Gateway to {self._host}:{self._port}, {len(self._gates)} jobs open>"

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="batch-gateway", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for batch_job_id in list(self._gates):
            self._call(loop, self._close(batch_job_id))
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def open(
        self, batch_job_id: int, owner: str, socket_path: Path, allowed: Iterable[int] = ()
    ) -> None:
        """Listen for batch job `batch_job_id`'s connections on `socket_path`.

        `allowed`: spalloc jobs it holds already (a standby handed over).

        Raises:
            OSError: the socket cannot be made.
        """
        assert self._loop is not None, "start() the gateway first"
        gate = _Gate(batch_job_id, owner, set(allowed))
        self._call(self._loop, self._open(gate, socket_path))

    def close(self, batch_job_id: int) -> None:
        """Stop listening for the job and end its connections (at its end)."""
        if self._loop is not None:
            self._call(self._loop, self._close(batch_job_id))

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(_OPEN_TIMEOUT_S)

    async def _open(self, gate: _Gate, socket_path: Path) -> None:
        # one left by an earlier runner of the same id cannot be: the folder is this runner's
        gate.server = await asyncio.start_unix_server(
            lambda r, w: self._accept(gate, r, w), path=str(socket_path), limit=MAX_LINE_BYTES + 2
        )
        self._gates[gate.batch_job_id] = gate

    async def _close(self, batch_job_id: int) -> None:
        gate = self._gates.pop(batch_job_id, None)
        if gate is None:
            return
        if gate.server is not None:
            gate.server.close()
        for task in list(gate.sessions):
            task.cancel()
        if gate.sessions:
            await asyncio.wait(list(gate.sessions), timeout=5)

    async def _accept(
        self, gate: _Gate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._gates.get(gate.batch_job_id) is not gate:  # came as the job was ending
            writer.close()
            return
        if len(gate.sessions) >= MAX_CONNECTIONS_PER_JOB:
            writer.write(
                encode_exception(
                    f"batch job {gate.batch_job_id} has {MAX_CONNECTIONS_PER_JOB} connections"
                    " to the allocation server open already; close one first"
                )
            )
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        gate.sessions.add(task)
        try:
            await _Session(gate, reader, writer).run(self._host, self._port)
        except asyncio.CancelledError:
            pass
        finally:
            gate.sessions.discard(task)
            writer.close()


class _Session:
    """One connection of a job's script, relayed to one connection to the server."""

    def __init__(
        self, gate: _Gate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._gate = gate
        self._reader = reader
        self._writer = writer
        self._pending: collections.deque[_Pending] = collections.deque()
        self._is_relaying_body = False
        """Raw bytes of a reply are being passed on: no line may go between them."""

    async def run(self, host: str, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                host, port, limit=_REPLY_LINE_LIMIT
            )
        except OSError as error:
            self._writer.write(
                encode_exception(f"the allocation server {host}:{port} cannot be reached: {error}")
            )
            with contextlib.suppress(OSError):
                await self._writer.drain()
            return
        try:
            async with asyncio.TaskGroup() as group:
                down = group.create_task(self._downstream(up_reader))
                group.create_task(self._upstream(up_writer, down))
        except* (OSError, asyncio.IncompleteReadError):
            pass  # either side went away: the other is closed below
        finally:
            up_writer.close()

    async def _upstream(self, up_writer: asyncio.StreamWriter, down: asyncio.Task[None]) -> None:
        """The script's requests, checked, to the server."""
        reader = self._reader
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                # (a half line at the end is dropped, as the server drops it)
                if up_writer.can_write_eof():
                    up_writer.write_eof()  # the server answers what came, then closes
                await down
                return
            except asyncio.LimitOverrunError:
                # As the server does: the replies to the lines before it, then the refusal,
                # then the end (the server answers what it has, then closes).
                self._reply_locally(
                    _Pending(
                        "?",
                        local_reply=encode_exception(
                            f"request line longer than {MAX_LINE_BYTES} bytes;"
                            " closing the connection"
                        ),
                    )
                )
                if up_writer.can_write_eof():
                    up_writer.write_eof()
                await down
                return
            pending, request = self._check(line)
            if request is None:
                self._reply_locally(pending)
                await self._writer.drain()
                continue
            self._pending.append(pending)
            up_writer.write(request)
            await up_writer.drain()
            if pending.go_ahead is not None:
                n_bytes = await pending.go_ahead
                if n_bytes is not None:
                    await _copy(reader, up_writer, n_bytes)

    async def _downstream(self, up_reader: asyncio.StreamReader) -> None:
        """The server's replies and notifications, to the script."""
        writer = self._writer
        while True:
            try:
                line = await up_reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                break  # the server closed: so does the script's connection
            n_body = self._on_server_line(line)
            writer.write(line)
            if n_body:
                self._is_relaying_body = True
                try:
                    await _copy(up_reader, writer, n_body)
                finally:
                    self._is_relaying_body = False
            self._write_local_replies()
            await writer.drain()
        for pending in self._pending:
            if pending.go_ahead is not None and not pending.go_ahead.done():
                pending.go_ahead.set_result(None)
        # the gateway's own replies still due (a refusal of an overlong line, after the
        # server's replies to the lines before it)
        while self._pending and self._pending[0].local_reply is None:
            self._pending.popleft()  # never answered: the server closed first
        self._write_local_replies()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
            await writer.drain()

    def _check(self, line: bytes) -> tuple[_Pending, bytes | None]:
        """The request to send for a line, or the gateway's own reply (request None)."""
        gate = self._gate
        command = "?"
        try:
            command, args, kwargs = decode_request_parts(line)
            if command not in _CHANGING and command not in _READS and command != "create_job":
                if command in command_table() or command.startswith("admin_"):
                    raise CommandError(f"{command} is not available to batch jobs")
                raise UnknownCommandError(command)
            if command == "create_job":
                kwargs = {**kwargs, "owner": gate.owner}
            bound = bind(command, args, kwargs)
            if command == "load_image" and bound.owner is not None:  # type: ignore[attr-defined]
                job = check_job_id(command, "job_id", getattr(bound, "job_id", None))
                if job in gate.created:
                    # the owner its create_job was given, whatever the script thinks it is
                    kwargs = {**kwargs, "owner": gate.owner}
                    bound = bind(command, args, kwargs)
        except (DecodeError, CommandError) as error:
            return _Pending(command, local_reply=encode_exception(str(error))), None
        if command in _CHANGING:
            job_id = check_job_id(command, "job_id", getattr(bound, "job_id", None))
            if job_id not in gate.allowed:
                refusal = f"job {job_id} is not an allocation of batch job {gate.batch_job_id}"
                return _Pending(command, local_reply=encode_exception(refusal)), None
        request = _encode_request(command, args, kwargs)
        if len(request) > MAX_LINE_BYTES + 1:
            refusal = f"request line longer than {MAX_LINE_BYTES} bytes once re-encoded"
            return _Pending(command, local_reply=encode_exception(refusal)), None
        pending = _Pending(command)
        if command == "load_image":
            pending.has_digest = getattr(bound, "sha256", None) is not None
            pending.go_ahead = asyncio.get_running_loop().create_future()
        return pending, request

    def _reply_locally(self, pending: _Pending) -> None:
        self._pending.append(pending)
        self._write_local_replies()

    def _write_local_replies(self) -> None:
        """Write the gateway's own replies that are next in order."""
        if self._is_relaying_body:
            return  # after the body (the downstream writes them then)
        while self._pending and self._pending[0].local_reply is not None:
            reply = self._pending.popleft().local_reply
            assert reply is not None
            self._writer.write(reply)

    def _on_server_line(self, line: bytes) -> int:
        """Take note of a line from the server; return the raw bytes that follow it."""
        try:
            message = json.loads(line)
        except ValueError:
            return 0
        if type(message) is not dict or ("return" not in message and "exception" not in message):
            return 0  # a notification
        if not self._pending:
            return 0
        pending = self._pending[0]
        value = message.get("return")
        is_return = "return" in message
        if pending.command == "load_image" and not pending.is_accepting:
            assert pending.go_ahead is not None
            if is_return and type(value) is dict and type(value.get("accepting_bytes")) is int:
                pending.is_accepting = True  # its reply after the body is still to come
                n_bytes = value["accepting_bytes"] + (
                    0 if pending.has_digest else DIGEST_TRAILER_BYTES
                )
                pending.go_ahead.set_result(n_bytes)
                return 0
            pending.go_ahead.set_result(None)
        self._pending.popleft()
        if not is_return:
            return 0
        if pending.command == "create_job" and type(value) is int:
            self._gate.allowed.add(value)
            self._gate.created.add(value)
        elif pending.command == "fetch_results" and type(value) is dict:
            n_bytes = value.get("n_bytes")
            return n_bytes if type(n_bytes) is int and n_bytes > 0 else 0
        return 0


def _encode_request(command: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
    """The request as the server will read it: compact JSON in UTF-8 (never longer than
    what came but for a number written another way)."""
    request = {"command": command, "args": args, "kwargs": kwargs}
    text = json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (an escape that names no character)
        return json.dumps(request, separators=(",", ":"), allow_nan=False).encode() + b"\n"


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n_bytes: int) -> None:
    """Relay exactly `n_bytes` raw bytes."""
    while n_bytes > 0:
        chunk = await reader.read(min(n_bytes, _CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", n_bytes)
        writer.write(chunk)
        await writer.drain()
        n_bytes -= len(chunk)
