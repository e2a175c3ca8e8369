"""Board-seconds of running batch jobs, read from the allocation server's own records.

Each batch job's script allocates boards under an owner that names the user and the batch
job (`spalloc_user` in the `spynnaker.cfg` the runner writes). While any job runs, a thread
of its own (with its own event loop, because the protocol client is async and the runner is
threaded) watches every job on the allocation server (`notify_job()`) and asks for
`list_jobs` as soon as anything changes (gathering what changes within `_GATHER_S`), and at
least every `interval_s`. Each allocation that has boards is credited with boards x the time
since it was last seen: from the poll before it first appeared (at most `interval_s`), to
the poll that no longer lists it. A batch job's charge is taken (`release`) only after a
poll that began once the job had ended, so an allocation of a few milliseconds is charged
too, and its last moments are never left out.

A batch job's allocations end with it: `release(owner, destroy_reason=...)` has that poll
destroy every allocation still listed under the owner (one left with no keepalive would
hold its boards for good), and charges them up to then.

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
from protocol.errors import ProtocolTimeoutError
from protocol.messages import JobListEntry

__all__ = ["CORES_PER_BOARD", "UsageMonitor", "core_hours"]

log = logging.getLogger("allotment.batch")

CORES_PER_BOARD = 768
"""48 chips x 16 application cores, as the Manchester quota manager counts a board."""


def core_hours(board_seconds: float) -> float:
    """Core-hours charged for `board_seconds`: board-seconds x 768 / 3600."""
    return board_seconds * CORES_PER_BOARD / 3600.0


_GATHER_S = 0.05
"""After a change, how long the monitor waits for others before it polls (one poll for all,
so a busy allocation server is asked at most about 20 times a second)."""
_SLICE_S = 0.01
"""How often a monitor counting for someone looks whether a release asked for a fresh poll."""
_IDLE_SLICE_S = 0.05
"""How often a monitor counting for nobody looks whether someone is watched."""
_RELEASE_WAIT_S = 5.0
"""The longest a release waits for its fresh poll (the server may be gone)."""


class UsageMonitor:
    """Accumulates board-seconds per owner while owners are registered."""

    def __init__(self, host: str | None, port: int, interval_s: float = 1.0) -> None:
        self._host = host
        self._port = port
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._board_seconds: dict[str, float] = {}
        self._last_seen: dict[int, float] = {}
        self._watched_at: dict[str, float] = {}  # owner -> when `watch` was called
        # spalloc job id -> (owner, boards) of every allocation the last poll listed with
        # boards, counted or not: a standby handed over is known before it is counted
        self._listed: dict[int, tuple[str, int]] = {}
        self._handed: dict[int, str] = {}  # spalloc job id -> the owner it was handed to
        self._handed_seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Fresh polls asked for by `release`: the count asked, and the count a finished
        # poll had seen asked when it began.
        self._polled = threading.Condition(self._lock)
        self._n_asked = 0
        self._n_answered = 0
        self._ending: dict[str, str] = {}  # owner -> the reason its allocations are destroyed
        # Owners of ended jobs whose allocations no poll could destroy when they ended (the
        # allocation server was away): destroyed by the next poll that can, then forgotten.
        self._doomed: dict[str, str] = {}
        self._n_destroyed = 0  # the count asked that the last poll which got through had seen

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
        """Start counting for `owner` (nothing of it is counted from before now)."""
        with self._lock:
            self._board_seconds.setdefault(owner, 0.0)
            self._watched_at.setdefault(owner, time.monotonic())

    def hand_over(self, owner: str, job_id: int, handed_at: float, n_boards: int) -> None:
        """Count spalloc job `job_id` (`n_boards` boards, unless a poll lists it with others)
        for `owner` from `handed_at` (a `time.monotonic()`)."""
        with self._lock:
            self._board_seconds.setdefault(owner, 0.0)
            self._handed[job_id] = owner
            self._handed_seconds.setdefault(owner, 0.0)
            self._last_seen[job_id] = handed_at
            self._listed.setdefault(job_id, (owner, n_boards))

    def release(
        self, owner: str, *, is_charging_handed: bool = True, destroy_reason: str | None = None
    ) -> float:
        """Stop counting for `owner` and return its board-seconds.

        Waits (a few seconds at most) for a poll that begins after the call, so that an
        allocation the job ended just before, or one a poll in flight found, is counted.

        Args:
            owner: the owner given to `watch`.
            is_charging_handed: include the allocation handed over to it (False when the
                job never used it).
            destroy_reason: if given, that poll destroys every allocation it lists under
                `owner`, with this reason (the job that made them has ended).
        """
        with self._lock:
            asked = 0
            if self._thread is not None and self._thread.is_alive():
                if destroy_reason is not None:
                    self._ending[owner] = destroy_reason
                self._n_asked += 1
                asked = self._n_asked
                self._polled.wait_for(
                    lambda: self._n_answered >= asked or self._stop.is_set(),
                    timeout=_RELEASE_WAIT_S + self._interval_s,
                )
            for job_id in [j for j, o in self._handed.items() if o == owner]:
                del self._handed[job_id]
                self._last_seen.pop(job_id, None)
            handed = self._handed_seconds.pop(owner, 0.0)
            self._watched_at.pop(owner, None)
            reason = self._ending.pop(owner, None)
            if reason is not None and self._n_destroyed < asked:
                # No poll got through since the job ended: what it left is destroyed when
                # one does (the time after the job's end is not charged to it).
                log.warning(
                    "the allocation server could not be asked to destroy what %s left;"
                    " it will be as soon as it can",
                    owner,
                )
                self._doomed[owner] = reason
            return self._board_seconds.pop(owner, 0.0) + (handed if is_charging_handed else 0.0)

    def _run(self) -> None:
        asyncio.run(self._poll_forever())

    async def _poll_forever(self) -> None:
        assert self._host is not None
        client: AllotmentClient | None = None
        previous: float | None = None  # when the last poll's list was asked for
        changed: float | None = None  # when the change this poll answers was told
        try:
            while not self._stop.is_set():
                with self._lock:
                    is_watching = bool(self._board_seconds) or bool(self._doomed)
                    asked = self._n_asked
                if not is_watching:
                    # Nobody to count for: no connection either, so that no job change
                    # piles up unread on the allocation server meanwhile.
                    await _close_quietly(client)
                    client = None
                    previous = changed = None
                    self._answer(asked)
                    await self._nap(None, until_watching=True)
                    continue
                try:
                    if client is None:
                        client = await AllotmentClient.connect(self._host, self._port)
                        await client.notify_job()  # every change: polled at once
                    now = time.monotonic()
                    entries = await client.list_jobs()
                    self._credit(entries, now, changed if changed is not None else previous)
                    previous = now
                    await self._destroy_ended(client, entries)
                    with self._lock:
                        self._n_destroyed = max(self._n_destroyed, asked)
                    self._answer(asked)
                    changed = await self._nap(client)
                except (ProtocolError, OSError) as error:
                    log.debug("usage poll failed: %s", error)
                    await _close_quietly(client)
                    client = None
                    previous = changed = None
                    self._answer(asked)  # a release waiting for it takes what there is
                    await self._nap(None)
        finally:
            await _close_quietly(client)
            with self._lock:
                self._polled.notify_all()

    async def _destroy_ended(self, client: AllotmentClient, entries: list[JobListEntry]) -> None:
        """Destroy what `entries` list under an owner whose batch job has ended."""
        with self._lock:
            ending = {**self._doomed, **self._ending}
            doomed = [(e.job_id, ending[e.owner]) for e in entries if e.owner in ending]
            # an owner left over from an earlier end with nothing listed any more is done
            listed_owners = {e.owner for e in entries}
            for owner in [o for o in self._doomed if o not in listed_owners]:
                del self._doomed[owner]
        for job_id, reason in doomed:
            log.info("destroying spalloc job %d: %s", job_id, reason)
            await client.destroy_job(job_id, reason)

    def _answer(self, asked: int) -> None:
        """A poll that began with `asked` fresh polls asked for has ended."""
        with self._lock:
            self._n_answered = max(self._n_answered, asked)
            self._polled.notify_all()

    async def _nap(
        self, client: AllotmentClient | None, *, until_watching: bool = False
    ) -> float | None:
        """Wait `interval_s`, less when a job changes (told on `client`), a release asks for
        a poll or (`until_watching`) an owner is watched; when a change was told, or None.
        """
        deadline = time.monotonic() + self._interval_s
        while not self._stop.is_set():
            with self._lock:
                if self._n_asked > self._n_answered:
                    return None
                if until_watching and self._board_seconds:
                    return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if client is None:
                await asyncio.sleep(min(left, _IDLE_SLICE_S if until_watching else _SLICE_S))
                continue
            try:
                await client.receive_notification(timeout_s=min(left, _SLICE_S))
            except ProtocolTimeoutError:
                continue
            told = time.monotonic()
            await asyncio.sleep(_GATHER_S)  # one poll for the changes that come together
            with contextlib.suppress(ProtocolTimeoutError):
                while True:
                    await client.receive_notification(timeout_s=0)
            return told
        return None

    def _credit(self, entries: list[JobListEntry], now: float, previous: float | None) -> None:
        """Credit what `entries` (listed at `now`) held; an allocation first seen now got its
        boards after `previous` (the last poll, or the change this poll answers; None after
        a poll that failed)."""
        with self._lock:
            live = {e.job_id for e in entries}
            listed = {e.job_id: (e.owner, len(e.boards)) for e in entries if e.boards}
            for job_id, (owner, n_boards) in listed.items():
                handed_to = self._handed.get(job_id)
                if handed_to is None and owner not in self._board_seconds:
                    continue
                last = self._last_seen.get(job_id)
                if last is None:
                    # first sight: it got its boards after `previous` and after its owner
                    # was watched, one interval ago at most
                    start = self._watched_at.get(owner, now - self._interval_s)
                    if previous is not None:
                        start = max(start, previous)
                    elapsed = min(now - start, self._interval_s)
                    self._last_seen[job_id] = now
                else:
                    # (nothing for a list asked before the hand-over it is credited after)
                    elapsed = now - last
                    self._last_seen[job_id] = max(now, last)
                self._add(job_id, owner, n_boards * max(0.0, elapsed))
            for job_id in live - listed.keys():
                if job_id in self._handed:
                    # A standby handed over before it had boards: counted from when it has.
                    self._last_seen[job_id] = max(self._last_seen.get(job_id, now), now)
            for job_id in [j for j in self._last_seen if j not in live]:
                # Gone since it was last seen: it held its boards until some time before
                # now, moments ago when a notification or a regular poll told. After a poll
                # that failed it may be long ago: no more than one interval past its last
                # sight counts then.
                last = self._last_seen.pop(job_id)
                known = self._listed.get(job_id)
                if known is not None:
                    owner, n_boards = known
                    end = now if previous is not None else min(now, last + self._interval_s)
                    self._add(job_id, owner, n_boards * max(0.0, end - last))
                self._handed.pop(job_id, None)
            # What the next poll needs of an allocation that is gone by then: its boards as
            # listed now (a standby's seed from `hand_over` goes once a list shows it).
            self._listed = listed

    def _add(self, job_id: int, owner: str, board_seconds: float) -> None:
        """Credit a spalloc job's board-seconds to whom it counts for (lock held)."""
        handed_to = self._handed.get(job_id)
        if handed_to is not None:
            if handed_to in self._handed_seconds:
                self._handed_seconds[handed_to] += board_seconds
        elif owner in self._board_seconds:
            self._board_seconds[owner] += board_seconds


async def _close_quietly(client: AllotmentClient | None) -> None:
    """Close a client if there is one, whatever state its connection is in."""
    if client is not None:
        with contextlib.suppress(Exception):
            await client.aclose()
