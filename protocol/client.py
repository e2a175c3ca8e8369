"""An anyio client for the spalloc v1 protocol and its extensions, usable from asyncio and trio.

One TCP connection carries requests, their replies in FIFO order, and notifications at any
point in between. There is no background task: whichever caller needs a line reads it, under
a lock, and files it where it belongs::

    caller A: send req 1 --+            +-- reply 1 -> slot 1 (A wakes)
    caller B: send req 2 --+--> wire -->+-- {"jobs_changed"} -> notification queue
                                        +-- reply 2 -> slot 2 (B wakes)

Several tasks may share one client (requests are pipelined). A call that times out or is
cancelled leaves its slot in the queue, so its late reply is consumed and dropped and later
calls stay correctly paired.

Usage::

    async with await AllotmentClient.connect("spinnaker.example.org", timeout_s=5.0) as c:
        job_id = await c.create_job(2, 1, owner="me")
        await c.notify_job(job_id)
        state = await c.get_job_state(job_id)
        async for notification in c:
            ...
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import TypeAdapter

from protocol.codec import decode_server_message, encode_request
from protocol.commands import get_spec
from protocol.errors import (
    BadReplyError,
    ConnectionLostError,
    DecodeError,
    ProtocolTimeoutError,
    ServerError,
)
from protocol.messages import (
    AllotmentVersionReply,
    ExceptionReply,
    JobListEntry,
    JobMachineInfoReply,
    JobStateReply,
    MachineListEntry,
    Notification,
    ReturnReply,
    ServerMessage,
    WhereIsReply,
    WireBoardCFB,
    WireBoardXYZ,
)

__all__ = ["DEFAULT_PORT", "AllotmentClient"]

DEFAULT_PORT: Final = 22244
"""The spalloc server's TCP port."""

_MAX_REPLY_BYTES: Final = 64 * 1024 * 1024
_MAX_QUEUED_NOTIFICATIONS: Final = 65536
_UNSET: Final[Any] = object()

_adapters: dict[str, TypeAdapter[Any]] = {}


def _adapter(command: str) -> TypeAdapter[Any]:
    adapter = _adapters.get(command)
    if adapter is None:
        adapter = TypeAdapter(get_spec(command).reply_type)
        _adapters[command] = adapter
    return adapter


@dataclass(slots=True)
class _Slot:
    """Where the reply to one sent request lands."""

    command: str
    message: ReturnReply | ExceptionReply | None = None


class AllotmentClient:
    """A connection to an allotment (or spalloc) server.

    Create it with `await AllotmentClient.connect(...)` and use it as an async context manager.
    Every method raises `ServerError` for an `exception` reply (the connection stays usable),
    `ProtocolTimeoutError` when no reply comes in time, and `ConnectionLostError` once the
    connection is gone (open a new client then).
    """

    def __init__(
        self, stream: anyio.abc.ByteStream, *, timeout_s: float | None = None, peer: str = ""
    ) -> None:
        """Wrap a connected byte stream (tests may pass an in-memory one).

        Args:
            stream: the connected stream.
            timeout_s: default time limit for one call; None waits forever.
            peer: how to name the server in `repr`.
        """
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._timeout_s = timeout_s
        self._peer = peer
        self._send_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        self._pending: deque[_Slot] = deque()
        self._notifications: deque[Notification] = deque(maxlen=_MAX_QUEUED_NOTIFICATIONS)
        self._broken: str | None = None
        self._is_closed = False
        self.n_notifications_dropped = 0
        """Notifications discarded because nobody read the queue (oldest first)."""

    @classmethod
    async def connect(
        cls, host: str, port: int = DEFAULT_PORT, *, timeout_s: float | None = 5.0
    ) -> AllotmentClient:
        """Open a connection.

        Args:
            host: server name or address.
            port: server TCP port.
            timeout_s: limit for connecting and the default limit for each call.

        Raises:
            ConnectionLostError: the connection could not be made.
            ProtocolTimeoutError: connecting took longer than `timeout_s`.
        """
        try:
            with anyio.fail_after(timeout_s):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError:
            raise ProtocolTimeoutError("connect", timeout_s or 0.0) from None
        except OSError as e:
            raise ConnectionLostError(f"cannot connect to {host}:{port}: {e}") from None
        return cls(stream, timeout_s=timeout_s, peer=f"{host}:{port}")

    def __repr__(self) -> str:
        status = (
            "closed" if self._is_closed else (f"broken: {self._broken}" if self._broken else "open")
        )
        return (
            f"<AllotmentClient {self._peer} {status}, {len(self._pending)} pending, "
            f"{len(self._notifications)} notifications queued>"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; later calls raise `ConnectionLostError`."""
        if not self._is_closed:
            self._is_closed = True
            self._broken = self._broken or "closed by the client"
            await self._stream.aclose()

    # --- the machinery ------------------------------------------------------------------------

    def _fail(self, reason: str) -> ConnectionLostError:
        if self._broken is None:
            self._broken = reason
        return ConnectionLostError(self._broken)

    async def _read_one(self) -> None:
        """Read one line and file it; call with the read lock held."""
        if self._broken is not None:
            raise ConnectionLostError(self._broken)
        try:
            line = await self._reader.receive_until(b"\n", _MAX_REPLY_BYTES)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            raise self._fail("server closed the connection") from None
        except anyio.DelimiterNotFound:
            raise self._fail(f"reply longer than {_MAX_REPLY_BYTES} bytes") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as e:
            raise self._fail(f"receive failed: {e!r}") from None
        if not line.strip():
            return
        try:
            message: ServerMessage = decode_server_message(line)
        except DecodeError as e:
            self._fail(str(e))
            raise
        if isinstance(message, ReturnReply | ExceptionReply):
            if not self._pending:
                self._fail("reply without a request")
                raise BadReplyError("reply without a request")
            self._pending.popleft().message = message
        else:
            if len(self._notifications) == self._notifications.maxlen:
                self.n_notifications_dropped += 1
            self._notifications.append(message)

    async def _exchange(self, command: str, line: bytes, timeout_s: float | None) -> Any:
        slot = _Slot(command)
        try:
            with anyio.fail_after(timeout_s):
                async with self._send_lock:
                    if self._broken is not None:
                        raise ConnectionLostError(self._broken)
                    self._pending.append(slot)
                    is_sent = False
                    try:
                        await self._stream.send(line)
                        is_sent = True
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as e:
                        raise self._fail(f"send failed: {e!r}") from None
                    finally:
                        if not is_sent:
                            # Partly written or not at all: the stream can no longer be trusted.
                            self._fail(f"{command!r} was interrupted while being sent")
                while slot.message is None:
                    async with self._read_lock:
                        if slot.message is None:
                            await self._read_one()
        except TimeoutError:
            raise ProtocolTimeoutError(command, timeout_s or 0.0) from None
        message = slot.message
        if isinstance(message, ExceptionReply):
            raise ServerError(message.exception)
        return message.value

    # --- generic calls and notifications ------------------------------------------------------

    async def call(
        self, command: str, *args: Any, timeout_s: float | None = _UNSET, **kwargs: Any
    ) -> Any:
        """Send any command (extensions included) and return the raw JSON `return` value.

        Args:
            command: the command name.
            *args: positional arguments (JSON values).
            timeout_s: time limit for this call (default: the client's).
            **kwargs: keyword arguments (JSON values).

        Raises:
            ServerError: the server answered with an exception.
            ProtocolTimeoutError: no reply in time.
            ConnectionLostError: the connection is gone.
        """
        limit = self._timeout_s if timeout_s is _UNSET else timeout_s
        return await self._exchange(command, encode_request(command, args, kwargs), limit)

    async def _typed(self, command: str, *args: Any, **kwargs: Any) -> Any:
        value = await self.call(command, *args, **kwargs)
        try:
            return _adapter(command).validate_python(value)
        except ValueError as e:
            raise BadReplyError(f"reply to {command!r} does not match its model: {e}") from None

    async def receive_notification(self, timeout_s: float | None = None) -> Notification:
        """Return the next notification, waiting for one if none is queued.

        Args:
            timeout_s: time limit; None waits forever.

        Raises:
            ProtocolTimeoutError: none arrived in time.
            ConnectionLostError: the connection is gone.
        """
        try:
            with anyio.fail_after(timeout_s):
                while not self._notifications:
                    async with self._read_lock:
                        if not self._notifications:
                            await self._read_one()
        except TimeoutError:
            raise ProtocolTimeoutError("notification", timeout_s or 0.0) from None
        return self._notifications.popleft()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        if self._is_closed:
            raise StopAsyncIteration
        return await self.receive_notification()

    # --- the v1 commands ----------------------------------------------------------------------

    async def version(self) -> str:
        """The v1 version string."""
        return cast(str, await self._typed("version"))

    async def create_job(
        self,
        *dims: int,
        owner: str,
        keepalive_s: float | None = 60.0,
        machine: str | None = None,
        tags: Sequence[str] | None = None,
        min_ratio: float | None = None,
        max_dead_boards: int | None = None,
        max_dead_links: int | None = None,
        require_torus: bool | None = None,
    ) -> int:
        """Request boards; returns the job id.

        Args:
            *dims: `()` one board, `(n)` at least n boards, `(w, h)` triads, `(x, y, z)`.
            owner: who the job is for.
            keepalive_s: seconds without a keepalive before the job is destroyed; None: never.
            machine: run only on this machine.
            tags: run only on a machine with all these tags.
            min_ratio: for `(n)`: the least squareness accepted.
            max_dead_boards: most dead boards accepted in the allocation.
            max_dead_links: most dead links accepted inside the allocation.
            require_torus: require wrap-around links.
        """
        options: dict[str, Any] = {
            "machine": machine,
            "tags": None if tags is None else list(tags),
            "min_ratio": min_ratio,
            "max_dead_boards": max_dead_boards,
            "max_dead_links": max_dead_links,
            "require_torus": require_torus,
        }
        kwargs = {k: v for k, v in options.items() if v is not None}
        return cast(
            int,
            await self._typed("create_job", *dims, owner=owner, keepalive=keepalive_s, **kwargs),
        )

    async def job_keepalive(self, job_id: int) -> None:
        """Keep a job alive."""
        await self.call("job_keepalive", job_id)

    async def get_job_state(self, job_id: int) -> JobStateReply:
        """A job's state (state 0 for an unknown job)."""
        return cast(JobStateReply, await self._typed("get_job_state", job_id))

    async def get_job_machine_info(self, job_id: int) -> JobMachineInfoReply:
        """A job's boards and their addresses (all null until allocated)."""
        return cast(JobMachineInfoReply, await self._typed("get_job_machine_info", job_id))

    async def power_on_job_boards(self, job_id: int) -> None:
        """Power on (or reset) a job's boards."""
        await self.call("power_on_job_boards", job_id)

    async def power_off_job_boards(self, job_id: int) -> None:
        """Power off a job's boards."""
        await self.call("power_off_job_boards", job_id)

    async def destroy_job(self, job_id: int, reason: str | None = None) -> None:
        """Destroy a job, recording `reason`."""
        await self.call("destroy_job", job_id, reason=reason)

    async def notify_job(self, job_id: int | None = None) -> None:
        """Watch a job (None: every job)."""
        await self.call("notify_job", job_id)

    async def no_notify_job(self, job_id: int | None = None) -> None:
        """Stop watching a job (None: all)."""
        await self.call("no_notify_job", job_id)

    async def notify_machine(self, machine_name: str | None = None) -> None:
        """Watch a machine (None: every machine)."""
        await self.call("notify_machine", machine_name)

    async def no_notify_machine(self, machine_name: str | None = None) -> None:
        """Stop watching a machine (None: all)."""
        await self.call("no_notify_machine", machine_name)

    async def list_jobs(self) -> list[JobListEntry]:
        """Live jobs, oldest first."""
        return cast(list[JobListEntry], await self._typed("list_jobs"))

    async def list_machines(self) -> list[MachineListEntry]:
        """Machines, in priority order."""
        return cast(list[MachineListEntry], await self._typed("list_machines"))

    async def get_board_position(
        self, machine_name: str, x: int, y: int, z: int
    ) -> WireBoardCFB | None:
        """The physical slot of logical board (x, y, z), or None."""
        return cast(
            WireBoardCFB | None, await self._typed("get_board_position", machine_name, x, y, z)
        )

    async def get_board_at_position(
        self, machine_name: str, cabinet: int, frame: int, board: int
    ) -> WireBoardXYZ | None:
        """The logical board in a physical slot, or None."""
        return cast(
            WireBoardXYZ | None,
            await self._typed("get_board_at_position", machine_name, cabinet, frame, board),
        )

    async def where_is(
        self,
        *,
        machine: str | None = None,
        x: int | None = None,
        y: int | None = None,
        z: int | None = None,
        cabinet: int | None = None,
        frame: int | None = None,
        board: int | None = None,
        chip_x: int | None = None,
        chip_y: int | None = None,
        job_id: int | None = None,
    ) -> WhereIsReply | None:
        """Locate a board or chip; give exactly one of the four key sets.

        The forms: `machine, x, y, z`; `machine, cabinet, frame, board`;
        `machine, chip_x, chip_y`; `job_id, chip_x, chip_y`. Returns None if nothing is there.
        """
        given = {
            "machine": machine,
            "x": x,
            "y": y,
            "z": z,
            "cabinet": cabinet,
            "frame": frame,
            "board": board,
            "chip_x": chip_x,
            "chip_y": chip_y,
            "job_id": job_id,
        }
        kwargs = {k: v for k, v in given.items() if v is not None}
        return cast(WhereIsReply | None, await self._typed("where_is", **kwargs))

    # --- extensions ---------------------------------------------------------------------------

    async def allotment_version(self) -> AllotmentVersionReply:
        """The server's name, package version and extension protocol number."""
        return cast(AllotmentVersionReply, await self._typed("allotment_version"))
