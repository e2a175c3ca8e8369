"""The batch service as a child process of `allotment serve`.

`BatchProcess.start` runs `python -m jobqueue serve ...` and returns once the child has
printed its ready line (or raises BatchStartError with what it said). The child is asked to
die with its parent (Linux `PR_SET_PDEATHSIG`), so a killed `allotment serve` leaves no batch
service behind; its jobs are recovered by the next start.

`BatchSupervisor` keeps it running, as a service manager would: a child that exits on its
own (killed, out of memory, a bug) is logged and started again, after 1 s, doubling up to a
minute while it keeps failing within a minute of its start. The jobs it was running end as
error ("their runner is gone") once the new one sees their runner's process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence

from jobqueue.errors import JobQueueError
from jobqueue.service import READY_PREFIX

__all__ = ["BatchProcess", "BatchStartError", "BatchSupervisor"]

log = logging.getLogger("allotment.batch")

_PR_SET_PDEATHSIG = 1
_FIRST_RESTART_S = 1.0
_LAST_RESTART_S = 60.0
_STABLE_S = 60.0
"""A child that ran this long before it exited is started again after the first delay."""


class BatchStartError(JobQueueError):
    """The batch service did not start; the message has its last words."""


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class BatchProcess:
    """A running batch service child; `url` is where it listens."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def __repr__(self) -> str:
        return f"<BatchProcess pid {self.process.pid} at {self.url}>"

    @classmethod
    def start(cls, arguments: Sequence[str], timeout_s: float = 60.0) -> BatchProcess:
        """Start `python -m jobqueue serve ARGUMENTS` and wait for its ready line."""
        process = subprocess.Popen(
            [sys.executable, "-m", "jobqueue", "serve", *arguments],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert process.stdout is not None
        found: list[str] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if not found and line.startswith(READY_PREFIX):
                    found.append(line[len(READY_PREFIX) :].strip())
                    ready.set()
            ready.set()

        ready = threading.Event()
        threading.Thread(target=read, name="batch-stdout", daemon=True).start()
        ready.wait(timeout_s)
        if not found:
            process.kill()
            process.wait()
            raise BatchStartError(
                f"the batch service did not start (exit status {process.returncode})"
            )
        return cls(process, found[0].split()[0])

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class BatchSupervisor:
    """The batch service child, started again whenever it exits on its own."""

    def __init__(self, arguments: Sequence[str]) -> None:
        self._arguments = list(arguments)
        self._child: BatchProcess | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<BatchSupervisor of {self._child!r}>"

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.process.pid

    def start(self) -> str:
        """Start the child (BatchStartError if it does not come up); its URL."""
        child = BatchProcess.start(self._arguments)
        self._child = child
        # Started again, it listens where it did (a port the first one picked, if asked for 0).
        port = urllib.parse.urlsplit(child.url).port
        if port is not None and "--port" in self._arguments:
            self._arguments[self._arguments.index("--port") + 1] = str(port)
        self._thread = threading.Thread(target=self._watch, name="batch-supervisor", daemon=True)
        self._thread.start()
        return child.url

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _watch(self) -> None:
        delay = _FIRST_RESTART_S
        started = time.monotonic()
        while not self._stopping.is_set():
            child = self._child
            if child is None:
                return
            status = child.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _STABLE_S:
                delay = _FIRST_RESTART_S
            log.error(
                "the batch service (pid %d) exited with status %s; starting it again in %g s",
                child.process.pid,
                status,
                delay,
            )
            while True:  # until one starts (or the server stops)
                if self._stopping.wait(delay):
                    return
                delay = min(_LAST_RESTART_S, delay * 2)
                try:
                    fresh = BatchProcess.start(self._arguments)
                    break
                except (BatchStartError, OSError) as error:
                    log.error(
                        "the batch service did not start again: %s; trying again in %g s",
                        error,
                        delay,
                    )
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    fresh.stop()
                    return
                self._child = fresh
            log.warning("the batch service is running again (pid %d)", fresh.process.pid)
