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

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeGuard, cast

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import TypeAdapter

from protocol import dispatch as d
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
_BODY_CHUNK_BYTES: Final = 1 << 20
_UPLOAD_BYTES_PER_S: Final = 10e6
"""The slowest upload the default time limit of `load_image` allows for."""

_adapters: dict[str, TypeAdapter[Any]] = {}


def _sha256_hex(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _adapter(command: str) -> TypeAdapter[Any]:
    adapter = _adapters.get(command)
    if adapter is None:
        adapter = TypeAdapter(get_spec(command).reply_type)
        _adapters[command] = adapter
    return adapter


@dataclass(slots=True)
class _Slot:
    """Where the reply to one sent request lands (and the raw bytes after it, if any)."""

    command: str
    message: ReturnReply | ExceptionReply | None = None
    has_body: bool = False
    body: bytes = b""


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
        self._notifications: deque[Notification | d.RunProgress] = deque(
            maxlen=_MAX_QUEUED_NOTIFICATIONS
        )
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
            message: ServerMessage | d.RunProgress = decode_server_message(line)
        except DecodeError as e:
            self._fail(str(e))
            raise
        if isinstance(message, ReturnReply | ExceptionReply):
            if not self._pending:
                self._fail("reply without a request")
                raise BadReplyError("reply without a request")
            slot = self._pending.popleft()
            slot.message = message
            if slot.has_body and isinstance(message, ReturnReply):
                slot.body = await self._read_body(message.value)
        else:
            if len(self._notifications) == self._notifications.maxlen:
                self.n_notifications_dropped += 1
            self._notifications.append(message)

    async def _read_body(self, header: Any) -> bytes:
        """Read the raw bytes that follow a reply line; call with the read lock held."""
        n_bytes = header.get("n_bytes") if isinstance(header, dict) else None
        if type(n_bytes) is not int or not 0 <= n_bytes <= _MAX_REPLY_BYTES:
            raise self._fail(f"reply header announces no valid body length: {header!r:.80}")
        try:
            return await self._reader.receive_exactly(n_bytes)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            raise self._fail("server closed the connection in the middle of a reply") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as e:
            raise self._fail(f"receive failed: {e!r}") from None

    async def _send(self, command: str, data: bytes | memoryview) -> None:
        """Send bytes; call with the send lock held. A partial send breaks the connection."""
        is_sent = False
        try:
            # A memoryview goes out as it is (both backends take any bytes-like object).
            await self._stream.send(cast(bytes, data))
            is_sent = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as e:
            raise self._fail(f"send failed: {e!r}") from None
        finally:
            if not is_sent:
                # Partly written or not at all: the stream can no longer be trusted.
                self._fail(f"{command!r} was interrupted while being sent")

    async def _send_hashed(self, command: str, view: memoryview) -> None:
        """Send `view` in chunks, then its sha256 as a trailer; call with the send lock held.

        The digest is computed on a thread (hashlib lets go of the GIL) while the chunks go.
        """
        digest: list[str] = []

        async def hash_view() -> None:
            digest.append(await anyio.to_thread.run_sync(_sha256_hex, view))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(hash_view)
                for start in range(0, len(view), _BODY_CHUNK_BYTES):
                    await self._send(command, view[start : start + _BODY_CHUNK_BYTES])
        except BaseExceptionGroup as group:
            # Only a send can fail (hashing cannot): raise what it raised, not the group.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        await self._send(command, digest[0].encode("ascii"))

    async def _wait(self, slot: _Slot) -> ReturnReply | ExceptionReply:
        while slot.message is None:
            async with self._read_lock:
                if slot.message is None:
                    await self._read_one()
        return slot.message

    async def _exchange(
        self, command: str, line: bytes, timeout_s: float | None, *, has_body: bool = False
    ) -> Any:
        slot = _Slot(command, has_body=has_body)
        try:
            with anyio.fail_after(timeout_s):
                async with self._send_lock:
                    if self._broken is not None:
                        raise ConnectionLostError(self._broken)
                    self._pending.append(slot)
                    await self._send(command, line)
                message = await self._wait(slot)
        except TimeoutError:
            raise ProtocolTimeoutError(command, timeout_s or 0.0) from None
        if isinstance(message, ExceptionReply):
            raise ServerError(message.exception)
        if has_body:
            return message.value, slot.body
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

    async def receive_notification(
        self, timeout_s: float | None = None
    ) -> Notification | d.RunProgress:
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

    async def __anext__(self) -> Notification | d.RunProgress:
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

    # --- dispatch extension -------------------------------------------------------------------

    async def load_image(
        self,
        job_id: int,
        data: bytes | bytearray | memoryview,
        *,
        owner: str | None = None,
        token: str | None = None,
        keep_state: bool = False,
        timeout_s: float | None = _UNSET,
    ) -> d.ImageLoaded:
        """Upload an image onto a job's boards; the server validates it before accepting it.

        The header line goes first; the bytes follow, in chunks, only once the server has
        accepted the header (so a refused upload costs nothing), and their sha256 after them:
        it is computed on a thread while they are sent.

        Args:
            job_id: a job in state ready with its boards powered on.
            data: the encoded image (`machine_models.Image.encode`).
            owner: the job's owner: needed on the first load of a job.
            token: the token an earlier load answered: needed on every later one.
            keep_state: the next run goes on from the running state with the new image's
                parameters (the image must lay the network out as the running one does).
            timeout_s: limit for the whole upload (default: the client's limit plus a second
                per 10 MB).

        Returns:
            What was stored, with the token every later dispatch command needs.

        Raises:
            ServerError: the server refused the header or the image, or could not carry
                the state over to it (the message says why; the previous image stays).
        """
        view = memoryview(data).cast("B")
        limit = self._timeout_s if timeout_s is _UNSET else timeout_s
        if timeout_s is _UNSET and limit is not None:
            limit += len(view) / _UPLOAD_BYTES_PER_S
        kwargs: dict[str, Any] = {"n_bytes": len(view)}  # the digest follows the bytes
        if owner is not None:
            kwargs["owner"] = owner
        if token is not None:
            kwargs["token"] = token
        if keep_state:
            kwargs["keep_state"] = True
        header = encode_request("load_image", [job_id], kwargs)
        go_ahead = _Slot("load_image")
        done = _Slot("load_image")
        try:
            with anyio.fail_after(limit):
                async with self._send_lock:
                    if self._broken is not None:
                        raise ConnectionLostError(self._broken)
                    self._pending.append(go_ahead)
                    await self._send("load_image", header)
                    reply = await self._wait(go_ahead)
                    if isinstance(reply, ExceptionReply):
                        raise ServerError(reply.exception)
                    self._pending.append(done)
                    await self._send_hashed("load_image", view)
                result = await self._wait(done)
        except TimeoutError:
            self._fail("load_image timed out in the middle of an upload")
            raise ProtocolTimeoutError("load_image", limit or 0.0) from None
        if isinstance(result, ExceptionReply):
            raise ServerError(result.exception)
        try:
            return d.ImageLoaded.model_validate(result.value)
        except ValueError as e:
            raise BadReplyError(f"reply to 'load_image' does not match its model: {e}") from None

    async def start_run(
        self, job_id: int, token: str, n_steps: int, *, fresh: bool = False, notify: bool = True
    ) -> d.RunStatus:
        """Queue a run of `n_steps` timesteps of the job's image.

        Args:
            job_id: the job.
            token: the token `load_image` answered.
            n_steps: timesteps to run.
            fresh: start from the loaded image rather than from where the last run ended.
            notify: send `run_progress` notifications on this connection.
        """
        return cast(
            d.RunStatus,
            await self._typed("start_run", job_id, token, n_steps, fresh=fresh, notify=notify),
        )

    async def run_status(self, job_id: int, token: str) -> d.RunStatus:
        """The job's latest run: its state, progress and queue position."""
        return cast(d.RunStatus, await self._typed("run_status", job_id, token))

    async def stop_run(self, job_id: int, token: str, reason: str | None = None) -> d.RunStatus:
        """Stop the job's run at once (its state and results stay as before the run)."""
        return cast(d.RunStatus, await self._typed("stop_run", job_id, token, reason=reason))

    async def wait_for_run(
        self,
        job_id: int,
        token: str,
        *,
        progress: Callable[[d.RunStatus], None] | None = None,
        timeout_s: float | None = None,
    ) -> d.RunStatus:
        """Wait until the job's latest run ends, on its notifications; return its last status.

        The run must have been started with ``notify=True`` on this connection. `progress`
        gets every status of the run in order, its last one included. Other notifications
        read meanwhile stay queued for `receive_notification`.

        Raises:
            ProtocolTimeoutError: the run did not end in time.
        """
        status = await self.run_status(job_id, token)
        run_id = status.run_id
        reported: d.RunStatus | None = None

        def report(update: d.RunStatus) -> None:
            nonlocal reported
            reported = update
            if progress is not None:
                progress(update)

        # Notifications of this run already queued came before the status just read.
        queued = [n for n in self._notifications if _is_progress_of(n, job_id)]
        if queued:
            self._notifications = deque(
                (n for n in self._notifications if not _is_progress_of(n, job_id)),
                maxlen=_MAX_QUEUED_NOTIFICATIONS,
            )
            for earlier in queued:
                if earlier.run_progress.run_id == run_id:
                    report(earlier.run_progress)
        kept: list[Notification | d.RunProgress] = []
        try:
            with anyio.fail_after(timeout_s):
                while status.state is not None and not status.state.is_over:
                    while not any(_is_progress_of(n, job_id) for n in self._notifications):
                        async with self._read_lock:
                            await self._read_one()
                    notification = self._notifications.popleft()
                    if not _is_progress_of(notification, job_id):
                        kept.append(notification)
                    elif notification.run_progress.run_id == run_id:
                        status = notification.run_progress
                        report(status)
        except TimeoutError:
            raise ProtocolTimeoutError("wait_for_run", timeout_s or 0.0) from None
        finally:
            self._notifications.extendleft(reversed(kept))
        if reported != status:
            report(status)  # the end is always reported, even of a run over before the call
        return status

    async def fetch_results(self, job_id: int, token: str, part: str = d.PART_ALL) -> bytes:
        """One part of the job's results (default: the whole results file), in ranges.

        Decode it with `machine_models.results_file`. A later run that replaces the results
        while they are being fetched makes the fetch start again.

        Raises:
            ServerError: no results yet, or no such part.
            BadReplyError: a range did not match its checksum.
        """
        while True:
            pieces: list[bytes] = []
            offset = 0
            snapshot: str | None = None
            while True:
                value, body = await self._exchange(
                    "fetch_results",
                    encode_request(
                        "fetch_results", [job_id, token], {"part": part, "offset": offset}
                    ),
                    self._timeout_s,
                    has_body=True,
                )
                try:
                    chunk = d.ResultsChunk.model_validate(value)
                except ValueError as e:
                    raise BadReplyError(f"reply to 'fetch_results' does not match: {e}") from None
                if hashlib.sha256(body).hexdigest() != chunk.sha256:
                    raise BadReplyError(f"results range at {offset} does not match its sha256")
                if snapshot is not None and chunk.snapshot != snapshot:
                    break
                snapshot = chunk.snapshot
                pieces.append(body)
                offset += chunk.n_bytes
                if offset >= chunk.total_bytes or not chunk.n_bytes:
                    return b"".join(pieces)


def _is_progress_of(
    notification: Notification | d.RunProgress, job_id: int
) -> TypeGuard[d.RunProgress]:
    return isinstance(notification, d.RunProgress) and notification.run_progress.job_id == job_id
