"""The service end to end without sockets: jobs, queue, power, keepalive, restart.

Time comes from a `FakeClock`; the store is a real SQLite file (and PostgreSQL where the
`db_url` fixture offers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from allocator.clock import FakeClock
from allocator.config import ServerConfig, default_config, parse_config
from allocator.errors import RequestError
from allocator.packing import AllocationConflictError
from allocator.service import V1_VERSION, Service
from protocol import messages as m
from protocol.errors import CommandError
from tests.allocator.service_harness import call, running_service, settle

SMALL = {
    "server": {"seconds_before_free": 10.0, "keepalive_check_s": 1.0, "starvation_s": 1000.0},
    "power": {"power_on_delay_s": 5.0, "power_off_delay_s": 1.0},
    "machines": [
        {
            "name": "small",
            "tags": ["default"],
            "width": 2,
            "height": 1,
            "board_locations": [[x, 0, z, 0, 0, 3 * x + z] for x in range(2) for z in range(3)],
        },
        {
            "name": "other",
            "tags": ["other"],
            "single_board": {"bmp_ip": "10.9.0.0", "spinnaker_ip": "10.9.0.1"},
        },
    ],
}


@dataclass(eq=False)
class FakeConnection:
    """What the service sees of a connection: the peer and its watch sets."""

    peer_host: str = "10.0.0.7"
    watch_all_jobs: bool = False
    watched_jobs: set[int] = field(default_factory=set)
    watch_all_machines: bool = False
    watched_machines: set[str] = field(default_factory=set)


@dataclass
class Harness:
    service: Service
    clock: FakeClock
    conn: FakeConnection
    changes: list[tuple[tuple[int, ...], tuple[str, ...]]]

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        return await call(self.service, self.conn, command, *args, **kwargs)

    async def state(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("get_job_state", job_id)
        return result

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)
        await self.settle()

    async def settle(self) -> None:
        await settle(self.service, self.clock)


def _config(**overrides: Any) -> ServerConfig:
    data = {
        key: (dict(value) if isinstance(value, dict) else value) for key, value in SMALL.items()
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_config(data)


@contextlib.asynccontextmanager
async def running(config: ServerConfig, db_url: str, clock: FakeClock) -> AsyncIterator[Harness]:
    async with running_service(config, db_url, clock) as service:
        changes: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        service.add_listener(lambda jobs, machines: changes.append((jobs, machines)))
        yield Harness(service, clock, FakeConnection(), changes)


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    async with running(_config(), db_url, FakeClock()) as harness:
        yield harness


async def test_version_is_accepted_by_spalloc_clients(h: Harness) -> None:
    version = await h.call("version")
    assert version == V1_VERSION
    parts = tuple(int(p) for p in version.split("."))
    assert (0, 1, 0) <= parts < (7, 0, 0)


async def test_one_board_job_powers_on_then_is_ready(h: Harness) -> None:
    job_id = await h.call("create_job", owner="alice")
    assert job_id == 1
    state = await h.state(job_id)
    assert state["state"] == 2
    assert state["power"] is True
    assert state["keepalivehost"] == "10.0.0.7"
    await h.advance(5.0)
    assert (await h.state(job_id))["state"] == 3
    info = await h.call("get_job_machine_info", job_id)
    assert (info["width"], info["height"]) == (8, 8)
    assert info["machine_name"] == "small"
    assert info["connections"][0][0] == [0, 0]
    assert len(info["boards"]) == 1


async def test_triad_job_chip_size_and_connections(h: Harness) -> None:
    job_id = await h.call("create_job", 1, 1, owner="bob")
    info = await h.call("get_job_machine_info", job_id)
    # one triad of a machine one triad high: no wrap in X (+4), wrap-around links in Y
    assert (info["width"], info["height"]) == (16, 12)
    assert sorted(tuple(c[0]) for c in info["connections"]) == [(0, 0), (4, 8), (8, 4)]


async def test_request_that_never_fits_is_destroyed_at_once(h: Harness) -> None:
    job_id = await h.call("create_job", 5, 5, owner="carol")
    state = await h.state(job_id)
    assert state == {
        "state": 4,
        "power": None,
        "keepalive": None,
        "reason": "Cancelled: No suitable machines available.",
        "start_time": None,
        "keepalivehost": None,
    }
    assert await h.call("list_jobs") == []


async def test_rejected_request_creates_nothing(h: Harness) -> None:
    with pytest.raises(CommandError, match="machine and tags"):
        await h.call("create_job", owner="eve", machine="small", tags=["default"])
    assert await h.call("list_jobs") == []
    # and the id counter was not consumed
    assert await h.call("create_job", owner="eve") == 1


async def test_destroy_reasons(h: Harness) -> None:
    allocated = await h.call("create_job", 2, 1, owner="dan")
    queued = await h.call("create_job", 2, 1, owner="dan")
    assert (await h.state(queued))["state"] == 1
    await h.call("destroy_job", queued)
    await h.call("destroy_job", allocated, "finished")
    assert (await h.state(queued))["reason"] == "Cancelled: "
    assert (await h.state(allocated))["reason"] == "finished"
    # destroying again is a no-op
    await h.call("destroy_job", allocated, "again")
    assert (await h.state(allocated))["reason"] == "finished"


async def test_boards_return_only_after_power_off_and_cool_down(h: Harness) -> None:
    first = await h.call("create_job", 2, 1, owner="a")
    await h.advance(5.0)  # powered on
    second = await h.call("create_job", 2, 1, owner="b")
    await h.call("destroy_job", first)
    assert (await h.state(second))["state"] == 1
    await h.advance(1.0)  # power-off done; cooling down for 10 s
    assert (await h.state(second))["state"] == 1
    await h.advance(9.0)
    assert (await h.state(second))["state"] == 1
    await h.advance(2.0)  # past the cool-down, and the timer runs every keepalive_check_s
    assert (await h.state(second))["state"] in (2, 3)


async def test_no_head_of_line_blocking(h: Harness) -> None:
    holder = await h.call("create_job", 1, 1, owner="a")
    big = await h.call("create_job", 2, 1, owner="b")  # needs the whole machine
    small = await h.call("create_job", owner="c")  # one board fits in the free triad
    assert (await h.state(holder))["state"] == 2
    assert (await h.state(big))["state"] == 1
    assert (await h.state(small))["state"] == 2


async def test_keepalive_expiry_reasons(h: Harness) -> None:
    allocated = await h.call("create_job", 2, 1, owner="a", keepalive=3.0)
    queued = await h.call("create_job", 2, 1, owner="b", keepalive=3.0)
    forever = await h.call("create_job", owner="c", machine="other", keepalive=None)
    await h.advance(2.0)
    await h.call("job_keepalive", allocated)
    await h.advance(2.0)
    assert (await h.state(queued))["reason"] == "Cancelled: Job timed out."
    assert (await h.state(allocated))["state"] in (2, 3)
    await h.advance(4.0)
    assert (await h.state(allocated))["reason"] == "Job timed out."
    await h.advance(1000.0)
    assert (await h.state(forever))["state"] == 3


async def test_power_off_and_on_again(h: Harness) -> None:
    job_id = await h.call("create_job", owner="a")
    await h.advance(5.0)
    await h.call("power_off_job_boards", job_id)
    state = await h.state(job_id)
    assert (state["state"], state["power"]) == (2, False)
    await h.advance(1.0)
    assert (await h.state(job_id))["state"] == 3
    await h.call("power_on_job_boards", job_id)
    assert (await h.state(job_id))["power"] is True


async def test_notifications_follow_commits(h: Harness) -> None:
    job_id = await h.call("create_job", owner="a")
    await h.settle()
    assert any(job_id in jobs and "small" in machines for jobs, machines in h.changes)
    h.changes.clear()
    await h.advance(5.0)  # power on finished -> job changed
    assert any(job_id in jobs for jobs, _ in h.changes)


async def test_one_commit_is_announced_once_with_every_job_it_changed(db_url: str) -> None:
    instant = _config(
        server={"seconds_before_free": 0.0},
        power={"power_on_delay_s": 0.0, "power_off_delay_s": 0.0},
    )
    async with running(instant, db_url, FakeClock()) as h:
        await h.settle()
        h.changes.clear()
        # Three creates read together share one commit: one announcement after their
        # replies, naming the three jobs and the machine.
        created = await asyncio.gather(*(h.call("create_job", owner=o) for o in "abc"))
        await h.settle()
        assert h.changes == [(tuple(created), ("small",))]
        # With no power delay a job is ready in the commit that created it: the power-on
        # it set off is part of that commit and its announcement, not a second one.
        assert [(await h.state(job_id))["state"] for job_id in created] == [3, 3, 3]
        h.changes.clear()
        await asyncio.gather(*(h.call("destroy_job", job_id, "done") for job_id in created))
        await h.settle()
        assert h.changes == [(tuple(created), ("small",))]


async def test_list_jobs_and_machines(h: Harness) -> None:
    job_id = await h.call("create_job", 2, owner="a", min_ratio=None, max_dead_boards=None)
    jobs = await h.call("list_jobs")
    assert [j["job_id"] for j in jobs] == [job_id]
    entry = jobs[0]
    m.JobListEntry.model_validate(entry)
    assert entry["args"] == [2]
    assert entry["owner"] == "a"
    assert entry["keepalivehost"] == "10.0.0.7"
    machines = await h.call("list_machines")
    assert [mc["name"] for mc in machines] == ["small", "other"]
    for mc in machines:
        m.MachineListEntry.model_validate(mc)


async def test_where_is_forms(h: Harness) -> None:
    job_id = await h.call("create_job", 1, 0, 1, owner="a", machine="small")
    by_board = await h.call("where_is", machine="small", x=1, y=0, z=1)
    assert by_board["job_id"] == job_id
    assert by_board["physical"] == [0, 0, 4]
    assert by_board["chip"] == [20, 4]
    assert by_board["job_chip"] == [0, 0]
    wrapped = await h.call("where_is", machine="small", x=3, y=0, z=1)
    assert wrapped["logical"] == [1, 0, 1]
    physical = await h.call("where_is", machine="small", cabinet=0, frame=0, board=4)
    assert physical["logical"] == [1, 0, 1]
    chip = await h.call("where_is", machine="small", chip_x=21, chip_y=5)
    assert chip["logical"] == [1, 0, 1]
    assert chip["board_chip"] == [1, 1]
    job_chip = await h.call("where_is", job_id=job_id, chip_x=1, chip_y=1)
    assert job_chip["chip"] == [21, 5]
    assert await h.call("where_is", job_id=job_id, chip_x=7, chip_y=0) is None
    assert await h.call("where_is", machine="nope", x=0, y=0, z=0) is None


async def test_board_position_lookups(h: Harness) -> None:
    assert await h.call("get_board_position", "small", 1, 0, 2) == [0, 0, 5]
    assert await h.call("get_board_at_position", "small", 0, 0, 5) == [1, 0, 2]
    assert await h.call("get_board_position", "small", 7, 0, 0) is None
    assert await h.call("get_board_at_position", "nope", 0, 0, 0) is None


async def test_restart_resumes_jobs_queue_and_counter(db_url: str) -> None:
    clock = FakeClock()
    async with running(_config(), db_url, clock) as h:
        allocated = await h.call("create_job", 2, 1, owner="a")
        queued = await h.call("create_job", 1, 1, owner="b")
        gone = await h.call("create_job", owner="c", machine="other")
        await h.call("destroy_job", gone, "done")
        await h.advance(5.0)
    async with running(_config(), db_url, clock) as h:
        state = await h.state(allocated)
        assert state["state"] == 3
        info = await h.call("get_job_machine_info", allocated)
        assert len(info["boards"]) == 6
        assert (await h.state(queued))["state"] == 1
        assert (await h.state(gone))["reason"] == "done"
        assert await h.call("create_job", owner="d", machine="other") == gone + 1


async def test_reload_removing_a_machine_destroys_its_jobs(h: Harness) -> None:
    on_other = await h.call("create_job", owner="a", machine="other")
    on_small = await h.call("create_job", owner="b")
    data = dict(SMALL)
    data["machines"] = [SMALL["machines"][0]]  # type: ignore[index]
    h.service.reconfigure(parse_config(data))
    await h.settle()
    assert (await h.state(on_other))["reason"] == "Machine removed."
    assert (await h.state(on_small))["state"] in (2, 3)
    assert [mc["name"] for mc in await h.call("list_machines")] == ["small"]


async def test_reload_marking_a_held_board_dead_is_refused_whole(h: Harness) -> None:
    on_other = await h.call("create_job", owner="a", machine="other")
    on_small = await h.call("create_job", owner="b")
    board = tuple((await h.call("get_job_machine_info", on_small))["boards"][0])
    data = copy.deepcopy(SMALL)
    small, _other = data["machines"]  # type: ignore[index]
    small["dead_boards"] = [list(board)]
    data["machines"] = [small]  # type: ignore[index]  # and "other" removed
    with pytest.raises(
        AllocationConflictError,
        match=rf"board \({board[0]}, {board[1]}, {board[2]}\) of job {on_small} is not a live"
        " board of small",
    ):
        h.service.reconfigure(parse_config(data))
    await h.settle()
    # Nothing of it applied: "other" is still there with its job, small's job untouched.
    assert [mc["name"] for mc in await h.call("list_machines")] == ["small", "other"]
    assert (await h.state(on_other))["state"] in (2, 3)
    assert (await h.state(on_small))["state"] in (2, 3)
    assert board in [tuple(b) for b in (await h.call("get_job_machine_info", on_small))["boards"]]


async def test_default_machine_serves_whole_machine_torus(db_url: str) -> None:
    async with running(default_config(), db_url, FakeClock()) as h:
        job_id = await h.call("create_job", 20, 20, owner="all", require_torus=True)
        info = await h.call("get_job_machine_info", job_id)
        assert (info["width"], info["height"]) == (240, 240)
        assert len(info["boards"]) == 1200


def test_harness_helpers_are_not_vacuous() -> None:
    # The config helper must keep SMALL intact between tests.
    before = repr(SMALL)
    _config(server={"seconds_before_free": 0.0})
    assert repr(SMALL) == before
    assert isinstance(_config(), ServerConfig)


async def test_retired_jobs_are_kept_up_to_the_limit_across_restarts(db_url: str) -> None:
    clock = FakeClock()
    config = _config(
        server={"max_retired_jobs": 3, "seconds_before_free": 0.0},
        power={"power_on_delay_s": 0.0, "power_off_delay_s": 0.0},
    )
    n_jobs = 70  # more than one batch of deletions from the database
    async with running(config, db_url, clock) as h:
        for i in range(n_jobs):
            job_id = await h.call("create_job", owner=f"r{i}", machine="other")
            await h.call("destroy_job", job_id, f"reason {i}")
        states = [await h.state(job_id) for job_id in range(1, n_jobs + 1)]
        assert [s["state"] for s in states] == [0] * (n_jobs - 3) + [4, 4, 4]
        assert states[-1]["reason"] == f"reason {n_jobs - 1}"
    async with running(config, db_url, clock) as h:
        states = [await h.state(job_id) for job_id in range(1, n_jobs + 1)]
        assert [s["state"] for s in states] == [0] * (n_jobs - 3) + [4, 4, 4]
        assert await h.call("create_job", owner="next", machine="other") == n_jobs + 1


async def test_the_last_destroyed_jobs_survive_a_restart_whatever_their_ids(db_url: str) -> None:
    # Jobs end in another order than they were created (long and short jobs): after a
    # restart the last `max_retired_jobs` destroyed still answer, not the highest ids.
    clock = FakeClock()
    config = _config(
        server={"max_retired_jobs": 4, "seconds_before_free": 0.0},
        power={"power_on_delay_s": 0.0, "power_off_delay_s": 0.0},
    )
    async with running(config, db_url, clock) as h:
        ids = [await h.call("create_job", owner=f"o{i}", machine="other") for i in range(3)]
        ids += [await h.call("create_job", owner=f"q{i}", keepalive=None) for i in range(5)]
        order = [ids[5], ids[6], ids[7], ids[3], ids[4], ids[0], ids[1], ids[2]]
        for job_id in order:
            await h.call("destroy_job", job_id, f"reason {job_id}")
            await h.advance(1.0)
    last = order[-4:]
    async with running(config, db_url, clock) as h:
        for job_id in last:
            state = await h.state(job_id)
            assert (state["state"], state["reason"]) == (4, f"reason {job_id}"), job_id
        for job_id in order[:-4]:
            assert (await h.state(job_id))["state"] == 0, job_id


async def test_queued_jobs_are_placed_only_while_queued(h: Harness) -> None:
    holder = await h.call("create_job", 2, 1, owner="a")
    cancelled = await h.call("create_job", 2, 1, owner="b")
    waiting = await h.call("create_job", 1, 1, owner="c")
    await h.advance(5.0)  # powered on
    await h.call("destroy_job", cancelled)
    await h.call("destroy_job", holder)
    await h.advance(12.0)  # power-off and cool-down: the machine is free again
    assert (await h.state(cancelled))["state"] == 4
    assert (await h.state(waiting))["state"] in (2, 3)
    # boards freed with nothing queued place nothing; the next job still gets boards
    await h.advance(5.0)
    await h.call("destroy_job", waiting)
    await h.advance(12.0)
    assert [j["job_id"] for j in await h.call("list_jobs")] == []
    assert (await h.state(await h.call("create_job", 2, 1, owner="d")))["state"] == 2


async def test_restored_queued_job_is_placed_when_boards_free(db_url: str) -> None:
    clock = FakeClock()
    async with running(_config(), db_url, clock) as h:
        holder = await h.call("create_job", 2, 1, owner="a")
        queued = await h.call("create_job", 1, 1, owner="b")
        await h.advance(5.0)
    async with running(_config(), db_url, clock) as h:
        assert (await h.state(queued))["state"] == 1
        await h.call("destroy_job", holder)
        await h.advance(12.0)
        assert (await h.state(queued))["state"] in (2, 3)


async def test_repeated_requests_are_parsed_by_every_argument(h: Harness) -> None:
    # create_job remembers parsed requests: two that differ in one argument are two
    first = await h.call("create_job", 1, 1, owner="a")
    torus = await h.call("create_job", 1, 1, owner="a", require_torus=True)
    assert (await h.state(first))["state"] == 2
    assert (await h.state(torus))["reason"] == "Cancelled: No suitable machines available."
    for _ in range(2):  # a refused request is refused every time
        with pytest.raises(RequestError, match="require_torus"):
            await h.call("create_job", owner="a", require_torus=True)


async def test_every_background_change_is_committed_and_announced(db_url: str) -> None:
    clock = FakeClock()
    async with running(_config(), db_url, clock) as h:
        first = await h.call("create_job", owner="a")
        second = await h.call("create_job", owner="b")
        await h.settle()
        h.changes.clear()
        await h.advance(5.0)  # the first powered on; the frame then powers the second on
        assert [jobs for jobs, _ in h.changes] == [(first,)]
        h.changes.clear()
        await h.advance(5.0)
        assert [jobs for jobs, _ in h.changes] == [(second,)]
    async with running(_config(), db_url, clock) as h:
        assert [(await h.state(j))["state"] for j in (first, second)] == [3, 3]


async def test_job_activity_is_logged_at_info_one_line_each(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="allotment")
    clock = FakeClock()
    async with running(_config(), db_url, clock) as h:
        kept = await h.call("create_job", 1, 1, owner="alice", keepalive=None)
        lapsed = await h.call("create_job", owner="bob", machine="other", keepalive=1.0)
        await h.advance(5.0)  # bob's job expires at 2 s, alice's is powered on at 5 s
        await h.call("destroy_job", kept, "finished")
    lines = [r.getMessage() for r in caplog.records if r.name == "allotment.jobs"]
    assert lines == [
        f"job {kept} created by alice from 10.0.0.7: 1 x 1 triads on tags default",
        f"job {kept} allocated 3 boards on small from (0, 0, 0) after 0.0 s queued",
        f"job {lapsed} created by bob from 10.0.0.7: 1 board on machine other",
        f"job {lapsed} allocated 1 board on other from (0, 0, 0) after 0.0 s queued",
        f"job {lapsed} expired: no keepalive for 1 s",
        f"job {lapsed} destroyed: Job timed out.",
        f"job {kept} powered on",
        f"job {kept} destroyed: finished",
    ]
    assert {r.levelno for r in caplog.records if r.name == "allotment.jobs"} == {logging.INFO}


async def test_a_fourth_positional_argument_is_max_dead_boards_and_survives_a_restart(
    db_url: str,
) -> None:
    # create_job(x, y, z, max_dead_boards): the protocol binds the fourth argument; the
    # request was refused as "given both", and a restored job could never be placed.
    clock = FakeClock()
    async with running(_config(), db_url, clock) as h:
        job_id = await h.call("create_job", 1, 0, 2, 0, owner="a")
        info = await h.call("get_job_machine_info", job_id)
        assert info["boards"] == [[1, 0, 2]]
        holder = await h.call("create_job", 1, 0, 1, owner="b")
        await h.call("destroy_job", holder, "make room later")
        queued = await h.call("create_job", 1, 0, 2, 1, owner="c")
        assert (await h.state(queued))["state"] == 1
    async with running(_config(), db_url, clock) as h:
        await h.call("destroy_job", job_id, "done")
        await h.advance(20.0)  # powered on, off, cooled down: board (1, 0, 2) is free again
        assert (await h.state(queued))["state"] in (2, 3)


async def test_job_listeners_hear_of_destroyed_jobs_and_switched_boards(h: Harness) -> None:
    heard: list[tuple[str, int, object]] = []

    class Listener:
        def job_destroyed(self, record: Any) -> None:
            heard.append(("destroyed", record.job_id, record.reason))

        def boards_powered(self, job_id: int, is_on: bool) -> None:
            heard.append(("powered", job_id, is_on))

    h.service.state.add_job_listener(Listener())
    job_id = await h.call("create_job", owner="a", keepalive=2.0)
    await h.call("power_off_job_boards", job_id)
    await h.call("power_on_job_boards", job_id)
    other = await h.call("create_job", owner="b", machine="other")
    await h.call("destroy_job", other, "done")
    await h.advance(10.0)  # job_id expires
    assert heard == [
        ("powered", job_id, False),
        ("powered", job_id, True),
        ("destroyed", other, "done"),
        ("destroyed", job_id, "Job timed out."),
    ]
    assert h.service.state.job_owner(job_id) == "a"
    assert h.service.state.job_place(other) is None


async def test_reload_keeps_single_board_jobs_that_share_a_triad(h: Harness) -> None:
    # Each was restored as the whole 1 x 1 triad: the second found it taken by the first
    # and the reload was refused ("triads of job N overlap another job"), as it was on any
    # busy machine.
    first = await h.call("create_job", owner="a")
    second = await h.call("create_job", owner="b")
    boards = [
        tuple((await h.call("get_job_machine_info", j))["boards"][0]) for j in (first, second)
    ]
    assert boards[0][:2] == boards[1][:2]  # one triad, two jobs
    data = copy.deepcopy(SMALL)
    data["machines"][0]["tags"] = ["default", "reloaded"]  # type: ignore[index]
    h.service.reconfigure(parse_config(data))
    await h.settle()
    (small,) = [mc for mc in await h.call("list_machines") if mc["name"] == "small"]
    assert small["tags"] == ["default", "reloaded"]
    for job_id, board in zip((first, second), boards, strict=True):
        assert (await h.state(job_id))["state"] in (2, 3)
        assert tuple((await h.call("get_job_machine_info", job_id))["boards"][0]) == board
    # the third board of the triad is still free for the next single-board job
    third = await h.call("create_job", owner="c")
    (board,) = (await h.call("get_job_machine_info", third))["boards"]
    assert tuple(board)[:2] == boards[0][:2]


async def test_boards_powered_off_are_announced_as_they_start_to_cool(h: Harness) -> None:
    # The change from powering (off) to cooling down was never announced: metrics and
    # events said "powering" until the boards came free.
    job_id = await h.call("create_job", owner="a")
    await h.advance(5.0)
    (board,) = (await h.call("get_job_machine_info", job_id))["boards"]
    await h.call("destroy_job", job_id, "done")
    await h.settle()
    h.changes.clear()
    await h.advance(1.0)  # the power-off delay: the boards start to cool down
    assert any("small" in machines for _, machines in h.changes), h.changes
    state = h.service.views.machine_state("small")
    assert state is not None
    (held,) = [b for b in state.boards if (b.x, b.y, b.z) == tuple(board)]
    assert held.state == "cooling_down"
