"""Receives an image's raw bytes into a temporary file, hashing as they come, off the event loop.

The connection hands each chunk it reads to `ImageUpload.feed` (on the event loop, which
only collects them); batches of about a megabyte go to a thread of the upload's own that
hashes and writes them, so the loop never hashes or touches the disk::

    socket --data_received--> feed(): collect --1 MiB--> thread: sha256.update, file.write
              ^                                              |
              +-- pause_reading above 16 MiB in flight, resume below 4 MiB

A body announced without its digest is followed by the digest itself (a trailer of
`trailer_bytes`), which is kept apart from the file for the owner to compare.

The image is never held whole in memory. `finished` resolves with the hex digest once every
byte is written (others can read the file whole), or raises `UploadError` if the connection
was lost or the upload was aborted; its owner then removes the temporary file. The file's
sync to the disk follows on the same thread, while the owner validates it: `synced` says
when the bytes are durable (an image is accepted only after that).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final

from allocator.dispatch.errors import UploadError

__all__ = ["ImageUpload"]

_BATCH_BYTES: Final = 1 << 20
_PAUSE_BYTES: Final = 16 << 20
_RESUME_BYTES: Final = 4 << 20


class ImageUpload:
    """One upload of `n_bytes` bytes into `path` (a body sink for `Connection.take_body`).

    Args:
        path: the temporary file to write (created here; removing it is the owner's part).
        n_bytes: exactly how many bytes the image has.
        transport: the connection's transport, paused while the disk falls behind.
        trailer_bytes: how many bytes follow the image (its digest), not written to the file.
        clock: monotonic seconds, for the idle time.
    """

    def __init__(
        self,
        path: Path,
        n_bytes: int,
        transport: Any,
        *,
        trailer_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.n_bytes = n_bytes
        self.n_total_bytes = n_bytes + trailer_bytes
        """The whole body: the image and its trailer."""
        self._trailer = bytearray()
        self._digest: str | None = None
        self._is_last_submitted = False
        self._transport = transport
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        # One thread per upload: its batches are hashed and written strictly in order.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatch-upload")
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._n_received = 0
        self._in_flight_bytes = 0
        self._is_paused = False
        self._is_aborted = False
        self._last_data_at = clock()
        self.finished: asyncio.Future[str] = self._loop.create_future()
        self._synced: asyncio.Future[None] = self._loop.create_future()
        self._writes: list[asyncio.Future[None]] = []
        if n_bytes == 0:
            self._submit_last()

    def __repr__(self) -> str:
        return (
            f"<ImageUpload {self._n_received}/{self.n_total_bytes} bytes"
            f" in_flight={self._in_flight_bytes}>"
        )

    # --- the body sink (called by the connection, on the event loop) --------------------

    @property
    def is_complete(self) -> bool:
        """Whether every byte of the body (the image and its trailer) has been taken."""
        return self._n_received >= self.n_total_bytes

    def feed(self, data: bytes) -> int:
        """Take the bytes of `data` that belong to the body; return how many."""
        taken = min(len(data), self.n_total_bytes - self._n_received)
        if self._is_aborted:
            # Aborted: swallow the rest of the declared body so the stream stays framed.
            self._n_received += taken
            return taken
        self._last_data_at = self._clock()
        image = min(taken, max(0, self.n_bytes - self._n_received))
        if image:
            self._batch.append(data if image == len(data) else data[:image])
            self._batch_bytes += image
        if taken > image:
            self._trailer += data[image:taken]
        self._n_received += taken
        if self._n_received >= self.n_bytes and not self._is_last_submitted:
            self._submit_last()
        elif self._batch_bytes >= _BATCH_BYTES:
            self._submit()
        if self.is_complete:
            self._resolve()
        return taken

    def lost(self) -> None:
        """The connection ended before the whole body came."""
        if not self.is_complete:
            self.abort(
                f"the connection was lost after {self._n_received} of {self.n_total_bytes} bytes"
            )

    # --- the rest -----------------------------------------------------------------------

    @property
    def idle_s(self) -> float:
        """Seconds since bytes last arrived."""
        return self._clock() - self._last_data_at

    @property
    def n_received(self) -> int:
        """Bytes of the body received so far."""
        return self._n_received

    @property
    def trailer(self) -> bytes:
        """The bytes that followed the image (its digest), once `finished`."""
        return bytes(self._trailer)

    async def synced(self) -> None:
        """Wait until the bytes are on the disk (after `finished`).

        Raises:
            UploadError: the file could not be synced, or the upload was aborted.
        """
        await asyncio.shield(self._synced)

    def abort(self, reason: str) -> None:
        """Give up: `finished` raises `UploadError(reason)`; the file is closed."""
        if self._is_aborted:
            return
        self._is_aborted = True
        for future in (self.finished, self._synced):
            if not future.done():
                future.set_exception(UploadError(reason))
                future.exception()  # retrieved here: a lost connection may await nothing
        self._resume()
        self._batch.clear()
        # The thread may have shut down already (every byte of the image came, the trailer
        # did not): then the file is closed, and the owner removes it.
        with contextlib.suppress(RuntimeError):
            self._thread.submit(self._discard)
        self._thread.shutdown(wait=False)

    def _submit(self) -> None:
        batch, self._batch = self._batch, []
        size, self._batch_bytes = self._batch_bytes, 0
        self._in_flight_bytes += size
        future = self._loop.run_in_executor(self._thread, self._write, batch)
        future.add_done_callback(lambda f: self._written(f, size))
        self._writes.append(future)
        if self._in_flight_bytes > _PAUSE_BYTES and not self._is_paused:
            self._is_paused = True
            self._transport.pause_reading()

    def _submit_last(self) -> None:
        self._is_last_submitted = True
        self._submit()
        written = self._loop.run_in_executor(self._thread, self._flush)
        written.add_done_callback(self._flushed)
        synced = self._loop.run_in_executor(self._thread, self._close)
        synced.add_done_callback(self._closed)

    def _written(self, future: asyncio.Future[None], size: int) -> None:
        self._in_flight_bytes -= size
        if self._is_aborted:
            return
        if future.cancelled() or future.exception() is not None:
            error = future.exception() if not future.cancelled() else None
            self.abort(f"the image could not be stored: {error}")
            return
        if self._is_paused and self._in_flight_bytes < _RESUME_BYTES:
            self._resume()

    def _stored(self, future: asyncio.Future[Any]) -> bool:
        """Whether a step of storing the file (flush, sync) went well; if not, abort."""
        if self._is_aborted:
            return False
        error = future.exception()
        if error is not None:
            self.abort(f"the image could not be stored: {error}")
            return False
        return True

    def _flushed(self, future: asyncio.Future[str]) -> None:
        if self._stored(future):
            self._digest = future.result()
            self._resolve()

    def _resolve(self) -> None:
        """`finished` once the image is hashed and written and its trailer has come."""
        if self._digest is not None and self.is_complete and not self.finished.done():
            self.finished.set_result(self._digest)

    def _closed(self, future: asyncio.Future[None]) -> None:
        if self._stored(future):
            self._synced.set_result(None)
            self._thread.shutdown(wait=False)

    def _resume(self) -> None:
        if self._is_paused:
            self._is_paused = False
            self._transport.resume_reading()

    # --- in the upload's thread ---------------------------------------------------------

    def _write(self, batch: list[bytes]) -> None:
        if self._file is None:
            self._file = self.path.open("wb")
        for chunk in batch:
            self._hash.update(chunk)
            self._file.write(chunk)

    def _flush(self) -> str:
        if self._file is None:
            self._file = self.path.open("wb")
        self._file.flush()
        return self._hash.hexdigest()

    def _close(self) -> None:
        assert self._file is not None
        os.fsync(self._file.fileno())
        self._file.close()

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
