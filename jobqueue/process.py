"""The batch service as a child process of `allotment serve`.

`BatchProcess.start` runs `python -m jobqueue serve ...` and returns once the child has
printed its ready line (or raises BatchStartError with what it said). The child is asked to
die with its parent (Linux `PR_SET_PDEATHSIG`), so a killed `allotment serve` leaves no batch
service behind; its jobs are recovered by the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from jobqueue.errors import JobQueueError
from jobqueue.service import READY_PREFIX

__all__ = ["BatchProcess", "BatchStartError"]

_PR_SET_PDEATHSIG = 1


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
        lines: list[str] = []
        found: list[str] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if not found and line.startswith(READY_PREFIX):
                    found.append(line[len(READY_PREFIX) :].strip())
                    ready.set()
                lines.append(line)
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
