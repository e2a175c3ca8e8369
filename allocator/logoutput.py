"""The server's log output: records formatted and written off the event loop, in batches.

The server logs every job's activity at INFO, a few lines per job. Writing each line as it
comes costs the event loop's thread a write system call (and a wake-up of whatever reads
the other end of stderr) per line. Instead the logging call only queues the record; a
thread of its own formats what has queued and writes it with one call::

    event loop: logger.info(...) --> SimpleQueue.put(record)        (no lock, no system call)
    "allotment-log" thread:  get --> drain the queue --> format --> one write, flush
                             --> sleep `batch_s` so that a busy server's lines gather

A line reaches stderr at most about `batch_s` after it was logged. `flush()` waits until
everything queued so far is written (before a line printed outside logging, and at exit).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from typing import TextIO

__all__ = ["QueuedStreamHandler", "ServerFormatter"]

_STOP = object()


class ServerFormatter(logging.Formatter):
    """``DATE TIME,MS LEVEL NAME: MESSAGE``; the date text is built once a second."""

    _second = -1
    _second_text = ""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)  # tracebacks: the standard layout
        return f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"


class QueuedStreamHandler(logging.Handler):
    """Queue records for a writer thread that formats and writes them in batches.

    Args:
        stream: where the lines go (stderr).
        batch_s: how long the writer waits after a write for more lines to gather.
    """

    def __init__(self, stream: TextIO, *, batch_s: float = 0.02) -> None:
        super().__init__()
        self._stream = stream
        self._batch_s = batch_s
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="allotment-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"<QueuedStreamHandler queued={self._queue.qsize()} alive={self._thread.is_alive()}>"

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is safe to share, and the writer is the only reader.
        if not self.filter(record):
            return False
        if self._thread.is_alive():
            self._queue.put(record)
        else:  # closed (at exit): write it at once
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.put(record)

    def flush(self) -> None:
        """Return once every record queued before the call is written (at most 5 s)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(5.0)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(5.0)
        super().close()

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            items = [item]
            try:
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            lines = []
            is_stopping = False
            events = []
            for item in items:
                if isinstance(item, logging.LogRecord):
                    try:
                        lines.append(self.format(item))
                    except Exception:
                        self.handleError(item)
                elif isinstance(item, threading.Event):
                    events.append(item)
                elif item is _STOP:
                    is_stopping = True
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except Exception:  # a closed or broken stderr: nothing to tell it to
                    pass
            for event in events:
                event.set()
            if is_stopping:
                return
            if not events:
                time.sleep(self._batch_s)
