"""Board-seconds read from a real allocation server: short allocations are charged for the
time they held their boards, to their end, not by whole polling intervals."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import anyio
import pytest

from jobqueue.usage import UsageMonitor
from protocol.client import AllotmentClient
from protocol.messages import JobListEntry
from tests.e2e.conftest import ServerProcess, start_server  # noqa: F401 - the fixture

OWNER = "alice nmpi-job-7"


@pytest.fixture
def server(start_server: Any) -> ServerProcess:  # noqa: F811 - the fixture above
    return start_server()  # type: ignore[no-any-return]


def _hold(server: ServerProcess, n_boards: int, hold_s: float) -> float:
    """Allocate `n_boards` as OWNER, hold them `hold_s`, destroy; the seconds between the
    create's reply and the destroy's."""

    async def run() -> float:
        async with await AllotmentClient.connect(server.host, server.port, timeout_s=10) as c:
            job_id = await c.create_job(n_boards, owner=OWNER)
            started = time.monotonic()
            await anyio.sleep(hold_s)
            await c.destroy_job(job_id, "done")
            return time.monotonic() - started

    return anyio.run(run)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hold_s", [0.3, 1.7])
def test_an_allocation_is_charged_for_the_time_it_held_its_boards(
    server: ServerProcess, hold_s: float
) -> None:
    monitor = UsageMonitor(server.host, server.port, interval_s=1.0)
    monitor.start()
    try:
        monitor.watch(OWNER)
        held_s = _hold(server, 3, hold_s)  # 3 boards: one triad
        board_seconds = monitor.release(OWNER)
    finally:
        monitor.stop()
    # Counted from about when it got its boards to about when it gave them back: within
    # the monitor's gathering of changes, not whole seconds of polling either way.
    assert board_seconds == pytest.approx(3 * held_s, abs=3 * 0.2)


@pytest.mark.timeout(60)
def test_other_owners_are_not_charged_and_a_released_owner_no_more(
    server: ServerProcess,
) -> None:
    monitor = UsageMonitor(server.host, server.port, interval_s=1.0)
    monitor.start()
    try:
        monitor.watch("bob nmpi-job-8")
        _hold(server, 1, 0.3)  # alice's, whom nobody watches
        assert monitor.release("bob nmpi-job-8") == 0.0
        assert monitor.release(OWNER) == 0.0  # never watched
    finally:
        monitor.stop()


@pytest.mark.timeout(60)
def test_an_ended_jobs_allocations_are_destroyed_and_charged_to_then(
    server: ServerProcess,
) -> None:
    # A script that leaves an allocation with no keepalive used to keep its boards for
    # good, uncharged after its batch job ended.
    async def allocate() -> list[int]:
        async with await AllotmentClient.connect(server.host, server.port, timeout_s=10) as c:
            return [
                await c.create_job(3, owner=OWNER, keepalive_s=None),
                await c.create_job(owner=OWNER, keepalive_s=None),
                await c.create_job(owner="someone else", keepalive_s=None),
            ]

    async def states(job_ids: list[int]) -> list[tuple[int, str | None]]:
        async with await AllotmentClient.connect(server.host, server.port, timeout_s=10) as c:
            found = [await c.get_job_state(job_id) for job_id in job_ids]
        return [(state.state, state.reason) for state in found]

    monitor = UsageMonitor(server.host, server.port, interval_s=1.0)
    monitor.start()
    try:
        monitor.watch(OWNER)
        started = time.monotonic()
        job_ids = anyio.run(allocate)
        time.sleep(0.5)
        board_seconds = monitor.release(OWNER, destroy_reason="batch job 7 ended")
        held_s = time.monotonic() - started
    finally:
        monitor.stop()
    destroyed, ready = 4, 3
    assert anyio.run(states, job_ids) == [
        (destroyed, "batch job 7 ended"),
        (destroyed, "batch job 7 ended"),
        (ready, None),
    ]
    assert board_seconds == pytest.approx(4 * held_s, abs=4 * 0.25)


def _entry(job_id: int, owner: str, n_boards: int | None) -> JobListEntry:
    return JobListEntry.model_validate(
        {
            "job_id": job_id,
            "owner": owner,
            "start_time": 0.0,
            "keepalive": 60.0,
            "state": 3,
            "power": True,
            "args": [],
            "kwargs": {},
            "allocated_machine_name": "spinn-1200",
            "boards": None if n_boards is None else [[0, 0, z] for z in range(n_boards)],
            "keepalivehost": "",
        }
    )


def test_a_standby_handed_over_and_gone_before_any_poll_lists_it_is_charged() -> None:
    monitor = UsageMonitor(None, 0, interval_s=1.0)  # no server: polls are fed by hand
    monitor.watch(OWNER)
    handed_at = time.monotonic()
    monitor.hand_over(OWNER, 12, handed_at, n_boards=1)
    monitor._credit([], handed_at + 0.3, previous=handed_at)  # gone: destroyed by then
    assert monitor.release(OWNER) == pytest.approx(0.3)


def test_after_a_failed_poll_a_vanished_allocation_counts_one_interval_at_most() -> None:
    monitor = UsageMonitor(None, 0, interval_s=1.0)
    monitor.watch(OWNER)
    t0 = time.monotonic()
    monitor._credit([_entry(5, OWNER, 3)], t0 + 0.5, previous=None)  # first sight
    # The server was unreachable for a minute; by then the job is gone.
    monitor._credit([], t0 + 60.5, previous=None)
    assert monitor.release(OWNER) == pytest.approx(3 * 0.5 + 3 * 1.0, abs=0.01)


def test_nothing_from_before_the_owner_was_watched_is_counted() -> None:
    monitor = UsageMonitor(None, 0, interval_s=1.0)
    monitor.watch(OWNER)
    watched_at = time.monotonic()
    monitor._credit([_entry(5, OWNER, 2)], watched_at + 0.2, previous=watched_at - 0.9)
    monitor._credit([_entry(5, OWNER, 2)], watched_at + 0.7, previous=watched_at + 0.2)
    assert monitor.release(OWNER) == pytest.approx(2 * 0.7, abs=0.01)


def test_a_standby_handed_over_before_it_had_boards_is_charged_from_when_it_has() -> None:
    monitor = UsageMonitor(None, 0, interval_s=1.0)
    monitor.watch(OWNER)
    t0 = time.monotonic()
    monitor.hand_over(OWNER, 12, t0, n_boards=3)
    standby = "nmpi-standby runner"
    monitor._credit([_entry(12, standby, None)], t0 + 2.0, previous=t0)  # still queued
    monitor._credit([_entry(12, standby, 3)], t0 + 2.5, previous=t0 + 2.0)  # boards now
    monitor._credit([_entry(12, standby, 3)], t0 + 12.5, previous=t0 + 2.5)
    monitor._credit([], t0 + 13.0, previous=t0 + 12.9)  # destroyed: told by a notification
    assert monitor.release(OWNER) == pytest.approx(3 * 11.0)


def test_a_list_asked_before_a_hand_over_credits_nothing_negative() -> None:
    monitor = UsageMonitor(None, 0, interval_s=1.0)
    monitor.watch(OWNER)
    t0 = time.monotonic()
    monitor.hand_over(OWNER, 12, t0 + 0.3, n_boards=1)  # after the list below was asked
    monitor._credit([_entry(12, "nmpi-standby runner", 1)], t0, previous=t0 - 1.0)
    monitor._credit([_entry(12, "nmpi-standby runner", 1)], t0 + 1.3, previous=t0)
    assert monitor.release(OWNER) == pytest.approx(1.0)


class _Relay:
    """A TCP relay on a port of its own to the allocation server, that can go away and come
    back on the same port (an allocation server that is down for a while)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        probe = socket.create_server(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.up()

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept, which then ends
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)


@pytest.mark.timeout(90)
def test_what_an_ended_job_left_while_the_server_was_away_is_destroyed_when_it_is_back(
    server: ServerProcess,
) -> None:
    # The one poll at the job's end failed and nothing tried again: an allocation with no
    # keepalive outlived its batch job for good.
    async def allocate() -> int:
        async with await AllotmentClient.connect(server.host, server.port, timeout_s=10) as c:
            return await c.create_job(owner=OWNER, keepalive_s=None)

    async def state(job_id: int) -> tuple[int, str | None]:
        async with await AllotmentClient.connect(server.host, server.port, timeout_s=10) as c:
            found = await c.get_job_state(job_id)
        return found.state, found.reason

    relay = _Relay((server.host, server.port))
    monitor = UsageMonitor("127.0.0.1", relay.port, interval_s=0.5)
    monitor.start()
    try:
        monitor.watch(OWNER)
        job_id = anyio.run(allocate)
        time.sleep(1.0)  # seen by a poll
        relay.down()
        monitor.release(OWNER, destroy_reason="batch job 7 ended")
        assert anyio.run(state, job_id) == (3, None)  # nobody could destroy it
        relay.up()
        deadline = time.monotonic() + 30
        while anyio.run(state, job_id)[0] != 4:
            assert time.monotonic() < deadline, "never destroyed"
            time.sleep(0.2)
        assert anyio.run(state, job_id) == (4, "batch job 7 ended")
    finally:
        monitor.stop()
        relay.down()
