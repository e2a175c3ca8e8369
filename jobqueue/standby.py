"""Powered allocations kept ahead of demand, handed to batch jobs as they start.

Powering a board on takes seconds; a job that asks for boards when its script maps the
network waits for all of it. The runner instead keeps `n_jobs` spalloc jobs of `n_boards`
boards allocated, powered and kept alive under an owner naming them as standby
(``nmpi-standby <runner id>``); a starting batch job is handed one (written into its
``spynnaker.cfg``) and a replacement is asked for at once::

    pool:  [standby 12 ready]                      job 7 starts
           take() -> 12 handed to job 7            pool asks for 13 (powering)
    job 7's script runs on 12 (or allocates its own if the network needs more boards)
    job 7 ends: finish(12) -> destroyed (used)     or back into the pool (untouched)

A handed-over job is kept alive by the pool until its batch job ends, then destroyed,
unless the allocation server says it was never used (still ready and powered, no image
ever loaded): then it goes back into the pool, and the batch job is not charged for it.
A standby that dies (expired, destroyed by an operator, lost with the server) is dropped
and replaced. The pool runs on a thread of its own with its own event loop, because the
protocol client is async and the runner is threaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from protocol import AllotmentClient, ProtocolError
from protocol.errors import ServerError
from protocol.messages import JobListEntry

__all__ = ["Standby", "StandbyPool"]

log = logging.getLogger("allotment.batch")

_READY = 3
_CALL_TIMEOUT_S = 10.0
_NO_IMAGE = "has no image loaded"
"""How the server answers a dispatch call on a job that never had an image."""


@dataclass(frozen=True)
class Standby:
    """A standby handed over: the spalloc job, the owner it was made with, and when."""

    job_id: int
    owner: str
    n_boards: int
    handed_at: float


class StandbyPool:
    """Keeps `n_jobs` powered allocations of `n_boards` boards on the allocation server.

    Args:
        host: the allocation server.
        port: its spalloc port.
        owner: the owner the standby jobs are created with.
        n_jobs: standby allocations kept (0: none; `take` then always answers None).
        n_boards: boards per standby allocation.
        keepalive_s: the standby jobs' keepalive.
        interval_s: how often the pool looks at the server's jobs and keeps its own alive.
    """

    def __init__(
        self,
        host: str | None,
        port: int,
        *,
        owner: str,
        n_jobs: int = 1,
        n_boards: int = 1,
        keepalive_s: float = 30.0,
        interval_s: float = 0.25,
    ) -> None:
        self._host, self._port, self.owner = host, port, owner
        self._where = f"{host}:{port}"
        self._n_jobs = n_jobs if host is not None else 0
        self._n_boards = n_boards
        self._keepalive_s = keepalive_s
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._waiting: dict[int, int] = {}  # standby job id -> state last seen
        self._handed: dict[int, Standby] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._wake: asyncio.Event | None = None
        self._client: AllotmentClient | None = None

    def __repr__(self) -> str:
        with self._lock:
            ready = sum(1 for s in self._waiting.values() if s == _READY)
            return (
                f"<StandbyPool {self._n_jobs} x {self._n_boards} boards: {ready} ready,"
                f" {len(self._waiting) - ready} powering, {len(self._handed)} handed over>"
            )

    @property
    def n_jobs(self) -> int:
        """Standby allocations kept."""
        return self._n_jobs

    def start(self) -> None:
        """Start the pool's thread (a no-op with no standby wanted)."""
        if self._n_jobs <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="batch-standby", daemon=True)
        self._thread.start()
        self._started.wait(5)

    def stop(self) -> None:
        """Destroy the standby jobs (and any still handed over) and stop the thread."""
        self._stop.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def take(self) -> Standby | None:
        """A standby for a starting batch job (a ready one first), or None; replaced at once."""
        with self._lock:
            if not self._waiting:
                return None
            job_id = max(self._waiting, key=lambda j: (self._waiting[j] == _READY, -j))
            del self._waiting[job_id]
            standby = Standby(job_id, self.owner, self._n_boards, time.monotonic())
            self._handed[job_id] = standby
        self._poke()
        return standby

    def finish(self, standby: Standby) -> bool:
        """The batch job that had `standby` ended: whether it used it (then it is destroyed).

        An untouched one goes back into the pool. When the server cannot say, it counts as
        used and is destroyed.
        """
        loop = self._loop
        if loop is None or not loop.is_running():
            return True
        future = asyncio.run_coroutine_threadsafe(self._finish(standby), loop)
        try:
            return future.result(_CALL_TIMEOUT_S * 3)
        except Exception as error:
            log.warning("returning standby job %d failed: %s", standby.job_id, error)
            return True

    # the pool's loop ----------------------------------------------------------------------

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._started.set()
        last_keepalive = 0.0
        is_reachable: bool | None = None  # once said, a change of it is said again
        try:
            while not self._stop.is_set():
                try:
                    client = await self._connected()
                    now = time.monotonic()
                    is_keeping = now - last_keepalive > self._keepalive_s / 4
                    await self._tend(client, is_keeping)
                    if is_keeping:
                        last_keepalive = now
                    if is_reachable is False:
                        log.info("the allocation server %s answers again", self._where)
                    is_reachable = True
                except (ProtocolError, OSError) as error:
                    if is_reachable is not False:
                        log.warning(
                            "the allocation server %s cannot be reached (%s): no standby"
                            " boards, and PyNN jobs on boards fail until it answers",
                            self._where,
                            error,
                        )
                    is_reachable = False
                    await self._disconnect()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            await self._release_all()
            await self._disconnect()

    async def _connected(self) -> AllotmentClient:
        if self._client is None:
            assert self._host is not None
            self._client = await AllotmentClient.connect(
                self._host, self._port, timeout_s=_CALL_TIMEOUT_S
            )
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _tend(self, client: AllotmentClient, is_keeping: bool) -> None:
        """Drop the dead, keep the living alive, ask for what is missing, trim what is over."""
        live = {entry.job_id: entry for entry in await client.list_jobs()}
        with self._lock:
            for job_id in [j for j in self._waiting if j not in live]:
                log.warning("standby job %d is gone; replacing it", job_id)
                del self._waiting[job_id]
            for job_id in self._waiting:
                self._waiting[job_id] = live[job_id].state
            ours = [*self._waiting, *(j for j in self._handed if j in live)]
            missing = self._n_jobs - len(self._waiting)
            surplus = sorted(self._waiting, key=lambda j: (self._waiting[j] == _READY, -j))
            over = surplus[: max(0, -missing)]
            for job_id in over:
                del self._waiting[job_id]
        for job_id in over:
            await client.destroy_job(job_id, "standby no longer needed")
        if is_keeping:
            for job_id in ours:
                await client.job_keepalive(job_id)
        for _ in range(max(0, missing)):
            if self._stop.is_set():
                break
            dims = () if self._n_boards == 1 else (self._n_boards,)
            job_id = await client.create_job(*dims, owner=self.owner, keepalive_s=self._keepalive_s)
            with self._lock:
                self._waiting[job_id] = 0
            n = self._n_boards
            log.info("standby job %d asked for (%d board%s)", job_id, n, "" if n == 1 else "s")

    async def _finish(self, standby: Standby) -> bool:
        client = await self._connected()
        with self._lock:
            self._handed.pop(standby.job_id, None)
        entry = next((e for e in await client.list_jobs() if e.job_id == standby.job_id), None)
        if entry is None:
            return True  # destroyed by the script (or gone): it was the job's until then
        if await self._is_untouched(client, entry):
            with self._lock:
                self._waiting[standby.job_id] = entry.state
            self._poke()  # the pool may now hold one too many
            return False
        await client.destroy_job(standby.job_id, "its batch job ended")
        return True

    async def _is_untouched(self, client: AllotmentClient, entry: JobListEntry) -> bool:
        """Ready, powered, and no image ever loaded: as the pool made it."""
        if entry.state != _READY or entry.power is not True:
            return False
        try:
            await client.run_status(entry.job_id, "")
        except ServerError as error:
            return _NO_IMAGE in str(error)
        return False

    async def _release_all(self) -> None:
        with self._lock:
            mine = [*self._waiting, *self._handed]
            self._waiting.clear()
            self._handed.clear()
        if not mine:
            return
        try:
            client = await self._connected()
            for job_id in mine:
                with contextlib.suppress(ServerError):
                    await client.destroy_job(job_id, "the batch runner stopped")
        except (ProtocolError, OSError) as error:
            log.warning("could not destroy standby jobs %s: %s", mine, error)
