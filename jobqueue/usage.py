"""Board-seconds of running batch jobs, read from the allocation server's own records.

Each batch job's script allocates boards under an owner that names the user and the batch
job (`spalloc_user` in the `spynnaker.cfg` the runner writes). While any job runs, a thread
of its own (with its own event loop, because the protocol client is async and the runner is
threaded) asks the allocation server for `list_jobs` every `interval_s` and credits each
allocation that has boards with boards x the time since it was last seen.

A standby allocation handed to a job (`jobqueue.standby`) keeps its standby owner; it is
credited to the job from the moment of hand-over (never for the time it waited as a
standby), and kept apart so that `release` can leave it out when the job never used it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from protocol import AllotmentClient, ProtocolError
from protocol.messages import JobListEntry

__all__ = ["CORES_PER_BOARD", "UsageMonitor", "core_hours"]

log = logging.getLogger("allotment.batch")

CORES_PER_BOARD = 768
"""48 chips x 16 application cores, as the Manchester quota manager counts a board."""


def core_hours(board_seconds: float) -> float:
    """Core-hours charged for `board_seconds`: board-seconds x 768 / 3600."""
    return board_seconds * CORES_PER_BOARD / 3600.0


class UsageMonitor:
    """Accumulates board-seconds per owner while owners are registered."""

    def __init__(self, host: str | None, port: int, interval_s: float = 1.0) -> None:
        self._host = host
        self._port = port
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._board_seconds: dict[str, float] = {}
        self._last_seen: dict[int, float] = {}
        self._handed: dict[int, str] = {}  # spalloc job id -> the owner it was handed to
        self._handed_seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<UsageMonitor {self._host}:{self._port}, {len(self._board_seconds)} owners>"

    def start(self) -> None:
        """Start polling (a no-op without an allocation server)."""
        if self._host is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="batch-usage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def watch(self, owner: str) -> None:
        """Start counting for `owner`."""
        with self._lock:
            self._board_seconds.setdefault(owner, 0.0)

    def hand_over(self, owner: str, job_id: int, handed_at: float) -> None:
        """Count spalloc job `job_id` for `owner` from `handed_at` (a `time.monotonic()`)."""
        with self._lock:
            self._board_seconds.setdefault(owner, 0.0)
            self._handed[job_id] = owner
            self._handed_seconds.setdefault(owner, 0.0)
            self._last_seen[job_id] = handed_at

    def release(self, owner: str, *, is_charging_handed: bool = True) -> float:
        """Stop counting for `owner` and return its board-seconds.

        Args:
            owner: the owner given to `watch`.
            is_charging_handed: include the allocation handed over to it (False when the
                job never used it).
        """
        with self._lock:
            for job_id in [j for j, o in self._handed.items() if o == owner]:
                del self._handed[job_id]
                self._last_seen.pop(job_id, None)
            handed = self._handed_seconds.pop(owner, 0.0)
            return self._board_seconds.pop(owner, 0.0) + (handed if is_charging_handed else 0.0)

    def _run(self) -> None:
        asyncio.run(self._poll_forever())

    async def _poll_forever(self) -> None:
        assert self._host is not None
        client: AllotmentClient | None = None
        try:
            while not self._stop.is_set():
                with self._lock:
                    is_watching = bool(self._board_seconds)
                if is_watching:
                    try:
                        if client is None:
                            client = await AllotmentClient.connect(self._host, self._port)
                        self._credit(await client.list_jobs(), time.monotonic())
                    except (ProtocolError, OSError) as error:
                        log.debug("usage poll failed: %s", error)
                        if client is not None:
                            with contextlib.suppress(Exception):
                                await client.aclose()
                        client = None
                await asyncio.sleep(self._interval_s)
        finally:
            if client is not None:
                await client.aclose()

    def _credit(self, entries: list[JobListEntry], now: float) -> None:
        with self._lock:
            for entry in entries:
                handed_to = self._handed.get(entry.job_id)
                if not entry.boards or (
                    handed_to is None and entry.owner not in self._board_seconds
                ):
                    continue
                last = self._last_seen.get(entry.job_id)
                # first sight: the allocation is counted from one interval ago at most
                elapsed = self._interval_s if last is None else now - last
                if handed_to is not None:
                    self._handed_seconds[handed_to] += len(entry.boards) * elapsed
                else:
                    self._board_seconds[entry.owner] += len(entry.boards) * elapsed
                self._last_seen[entry.job_id] = now
            live = {entry.job_id for entry in entries}
            for job_id in [j for j in self._last_seen if j not in live and j not in self._handed]:
                del self._last_seen[job_id]
