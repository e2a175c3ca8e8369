"""Operator commands in the service: token, service status, drain, destroy, audit, restart.

The service runs without sockets on a `FakeClock` and a real database (SQLite, and
PostgreSQL where the `db_url` fixture offers it); a restart opens a second service on the
same database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from allocator.clock import FakeClock
from allocator.config import ServerConfig, parse_config
from allocator.service import AdminTargetError, Service
from allocator.store import Store
from machine_models.geometry import BoardXYZ
from protocol.admin import AuditEntry, LinkOut, MachineState, OperatorTokenError
from protocol.events import BoardState
from tests.allocator.service_harness import call, running_service, settle

TOKEN = "s3cret"


def config(token: str = TOKEN) -> ServerConfig:
    return parse_config({
        "server": {"seconds_before_free": 0.0, "keepalive_check_s": 1.0, "operator_token": token},
        "power": {"power_on_delay_s": 0.0, "power_off_delay_s": 0.0},
        "machines": [{
            "name": "small", "tags": ["default"], "width": 2, "height": 1,
            "board_locations": [[x, 0, z, 0, 0, 3 * x + z] for x in range(2) for z in range(3)],
        }],
    })  # fmt: skip


@dataclass(eq=False)
class FakeConnection:
    peer_host: str = "10.0.0.9"


@dataclass
class Harness:
    service: Service
    clock: FakeClock

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        return await call(self.service, FakeConnection(), command, *args, **kwargs)

    async def settle(self) -> None:
        await settle(self.service, self.clock)

    async def board_state(self, x: int, y: int, z: int) -> BoardState:
        state: MachineState = await self.call("admin_machine_state", "small")
        return next(b.state for b in state.boards if (b.x, b.y, b.z) == (x, y, z))


@contextlib.asynccontextmanager
async def running(db_url: str, cfg: ServerConfig | None = None) -> AsyncIterator[Harness]:
    clock = FakeClock()
    async with running_service(
        cfg or config(), db_url, clock, wall_clock=lambda: 1_700_000_000.0
    ) as service:
        yield Harness(service, clock)


async def test_admin_commands_are_disabled_without_a_configured_token(db_url: str) -> None:
    async with running(db_url, config(token="")) as h:
        with pytest.raises(OperatorTokenError, match="disabled"):
            await h.call("admin_drain_machine", "anything", "small", "why")


async def test_a_wrong_token_changes_nothing(db_url: str) -> None:
    async with running(db_url) as h:
        with pytest.raises(OperatorTokenError, match="admin_set_board_service needs a valid"):
            await h.call("admin_set_board_service", "wrong", "small", 0, 0, 0, False, "x")
        assert await h.board_state(0, 0, 0) is BoardState.FREE


async def test_unknown_targets_are_named(db_url: str) -> None:
    async with running(db_url) as h:
        with pytest.raises(AdminTargetError, match="machine 'nope' does not exist"):
            await h.call("admin_drain_machine", TOKEN, "nope", "why")
        with pytest.raises(AdminTargetError, match=r"board \(5, 0, 0\) of machine 'small'"):
            await h.call("admin_set_board_service", TOKEN, "small", 5, 0, 0, False, "why")
        with pytest.raises(AdminTargetError, match="job 99 is not a live job"):
            await h.call("admin_destroy_job", TOKEN, 99, "why")


async def test_a_board_out_of_service_is_never_allocated_and_survives_a_restart(
    db_url: str,
) -> None:
    async with running(db_url) as h:
        entry = await h.call(
            "admin_set_board_service", TOKEN, "small", 0, 0, 1, False, "fan failed", "ops"
        )
        assert isinstance(entry, AuditEntry)
        assert (entry.operator, entry.peer, entry.reason) == ("ops", "10.0.0.9", "fan failed")
        assert "small board (0, 0, 1) out of service" in entry.target
        assert await h.board_state(0, 0, 1) is BoardState.OUT_OF_SERVICE
        # Like a dead board: a rectangle around it is granted without it.
        job_id = await h.call("create_job", 2, 1, owner="me")
        await h.settle()
        info = await h.call("get_job_machine_info", job_id)
        assert len(info["boards"]) == 5
        assert [0, 0, 1] not in info["boards"]
        assert await h.board_state(0, 0, 1) is BoardState.OUT_OF_SERVICE
    async with running(db_url) as h:
        assert await h.board_state(0, 0, 1) is BoardState.OUT_OF_SERVICE
        state: MachineState = await h.call("admin_machine_state", "small")
        out = next(b for b in state.boards if (b.x, b.y, b.z) == (0, 0, 1))
        assert out.reason == "fan failed"
        await h.call("admin_set_board_service", TOKEN, "small", 0, 0, 1, True, "fan replaced")
        assert await h.board_state(0, 0, 1) is not BoardState.OUT_OF_SERVICE
        log = await h.call("admin_audit_log", TOKEN, 10)
        assert [e.reason for e in log] == ["fan replaced", "fan failed"]
        assert log[0].audit_id == log[1].audit_id + 1


async def test_a_drained_machine_allocates_nothing_until_undrained_even_after_restart(
    db_url: str,
) -> None:
    async with running(db_url) as h:
        await h.call("admin_drain_machine", TOKEN, "small", "firmware update")
        job_id = await h.call("create_job", owner="me")
        await h.settle()
        assert (await h.call("get_job_state", job_id))["state"] == 1
        state: MachineState = await h.call("admin_machine_state", "small")
        assert state.is_draining
    # Persisted as the machine's state, not left to be rebuilt from the audit log.
    store = await Store.open(db_url)
    try:
        (status,) = (await store.load(audit_limit=0)).machine_status
        assert (status.machine, status.is_draining, status.reason) == (
            "small",
            True,
            "firmware update",
        )
    finally:
        await store.close()
    async with running(db_url) as h:
        assert h.service.is_draining("small")
        await h.settle()
        assert (await h.call("get_job_state", job_id))["state"] == 1
        await h.call("admin_undrain_machine", TOKEN, "small", "update done")
        await h.settle()
        assert (await h.call("get_job_state", job_id))["state"] == 3
        assert not h.service.is_draining("small")


async def test_destroy_records_the_reason_on_the_job_and_in_the_audit_log(db_url: str) -> None:
    async with running(db_url) as h:
        job_id = await h.call("create_job", owner="alice")
        await h.settle()
        entry = await h.call("admin_destroy_job", TOKEN, job_id, "runaway job", operator="bob")
        assert entry.target == f"job {job_id} of alice"
        state = await h.call("get_job_state", job_id)
        assert (state["state"], state["reason"]) == (4, "runaway job")
        (newest,) = await h.call("admin_audit_log", TOKEN, 1)
        assert (newest.action, newest.operator) == ("admin_destroy_job", "bob")


async def test_a_link_out_of_service_is_shown_on_the_map_and_to_clients(db_url: str) -> None:
    async with running(db_url) as h:
        await h.call("admin_set_link_service", TOKEN, "small", 1, 0, 2, 2, False, "cable")
        state: MachineState = await h.call("admin_machine_state", "small")
        board = next(b for b in state.boards if (b.x, b.y, b.z) == (1, 0, 2))
        assert board.n_dead_links == 1
        assert state.links_out == (LinkOut(x=1, y=0, z=2, link=2, is_dead=False, reason="cable"),)
    async with running(db_url) as h:
        state = await h.call("admin_machine_state", "small")
        board = next(b for b in state.boards if (b.x, b.y, b.z) == (1, 0, 2))
        assert board.n_dead_links == 1
        assert [(link.link, link.reason) for link in state.links_out] == [(2, "cable")]


async def test_a_link_out_of_service_affects_allocation_until_back(db_url: str) -> None:
    async with running(db_url) as h:
        # A link inside triad (0, 0): a whole-triad request tolerating no dead link
        # must go to triad (1, 0) while it is out.
        await h.call("admin_set_link_service", TOKEN, "small", 0, 0, 0, 1, False, "cable")
        first = await h.call("create_job", 1, 1, owner="a", max_dead_links=0)
        await h.settle()
        info = await h.call("get_job_machine_info", first)
        assert {b[0] for b in info["boards"]} == {1}
        second = await h.call("create_job", 1, 1, owner="b", max_dead_links=0)
        await h.settle()
        assert (await h.call("get_job_state", second))["state"] == 1
        await h.call("admin_set_link_service", TOKEN, "small", 0, 0, 0, 1, True, "fixed")
        await h.settle()
        assert (await h.call("get_job_state", second))["state"] == 3
        info = await h.call("get_job_machine_info", second)
        assert {b[0] for b in info["boards"]} == {0}


async def test_list_machines_reports_what_the_allocator_sees(db_url: str) -> None:
    async with running(db_url) as h:
        await h.call("admin_set_link_service", TOKEN, "small", 1, 0, 2, 2, False, "cable")
        await h.call("admin_set_board_service", TOKEN, "small", 0, 0, 1, False, "fan")
        (small,) = await h.call("list_machines")
        assert small["dead_links"] == [[1, 0, 2, 2]]
        assert small["dead_boards"] == [[0, 0, 1]]
        await h.call("admin_set_link_service", TOKEN, "small", 1, 0, 2, 2, True, "fixed")
        await h.call("admin_set_board_service", TOKEN, "small", 0, 0, 1, True, "fixed")
        (small,) = await h.call("list_machines")
        assert (small["dead_links"], small["dead_boards"]) == ([], [])


async def test_list_machines_never_shows_a_service_change_before_it_is_durable(
    db_url: str,
) -> None:
    # The operator's change is answered once committed; another client's list_machines
    # answered at once from memory, showing what a failed commit would then lose.
    async with running(db_url) as h:
        store = h.service.state._store
        change = asyncio.create_task(
            h.call("admin_set_board_service", TOKEN, "small", 0, 0, 1, False, "fan")
        )
        for _ in range(100):  # until the change is made and its commit under way
            if store.n_pending:
                break
            await asyncio.sleep(0)
        assert store.n_pending > 0
        (small,) = await h.call("list_machines")
        assert small["dead_boards"] == [[0, 0, 1]]
        assert store.n_pending == 0
        await change


async def test_machine_state_shows_jobs_and_board_states(db_url: str) -> None:
    async with running(db_url) as h:
        job_id = await h.call("create_job", 1, 1, owner="alice")
        await h.settle()
        state: MachineState = await h.call("admin_machine_state", "small")
        assert [(j.job_id, j.owner, j.n_boards) for j in state.jobs] == [(job_id, "alice", 3)]
        allocated = [b for b in state.boards if b.state is BoardState.ALLOCATED]
        assert len(allocated) == 3
        assert {b.job_id for b in allocated} == {job_id}
        assert all(b.cabinet == 0 and b.frame == 0 for b in state.boards)


async def test_board_views_agree_with_machine_state_in_every_board_state(db_url: str) -> None:
    # The reporter's cheap walk and the map's full one must say the same of every board:
    # free, dead, out of service (with its reason), powering, allocated, cooling down.
    cfg = parse_config({
        "server": {"seconds_before_free": 30.0, "keepalive_check_s": 1.0, "operator_token": TOKEN},
        "power": {"power_on_delay_s": 5.0, "power_off_delay_s": 5.0},
        "machines": [{
            "name": "small", "tags": ["default"], "width": 3, "height": 1,
            "dead_boards": [[2, 0, 2]],
            "board_locations": [
                [x, 0, z, 0, 0, 3 * x + z] for x in range(3) for z in range(3) if (x, z) != (2, 2)
            ],
        }],
    })  # fmt: skip
    seen: set[BoardState] = set()

    def check(h: Harness) -> None:
        state = h.service.machine_state("small")
        views = h.service.board_views("small")
        assert state is not None
        assert views is not None
        assert list(views) == [(b.x, b.y, b.z) for b in state.boards]
        for board in state.boards:
            key = (board.x, board.y, board.z)
            assert views[key] == (board.state, board.job_id, board.reason), key
            assert h.service.board_status("small", BoardXYZ(*key)) == board
            seen.add(board.state)
        assert h.service.n_allocated_jobs("small") == len(state.jobs)

    async with running(db_url, cfg) as h:
        check(h)
        await h.call("admin_set_board_service", TOKEN, "small", 2, 0, 1, False, "fan failed")
        first = await h.call("create_job", 1, 1, owner="a")
        await h.settle()
        check(h)  # powering
        await h.clock.advance(5.0)
        await h.settle()
        check(h)  # allocated
        second = await h.call("create_job", 1, 1, owner="b")
        await h.settle()
        await h.call("destroy_job", first, "done")
        await h.settle()
        check(h)  # the first job's boards powering off, the second's powering on
        await h.clock.advance(5.0)
        await h.settle()
        check(h)  # the second job's allocated; the first's power off after (one BMP)
        await h.clock.advance(5.0)
        await h.settle()
        check(h)  # the first job's boards cooling down
        assert (await h.call("get_job_state", second))["state"] == 3
    assert h.service.board_views("nope") is None
    assert seen >= {
        BoardState.FREE,
        BoardState.DEAD,
        BoardState.OUT_OF_SERVICE,
        BoardState.POWERING,
        BoardState.ALLOCATED,
        BoardState.COOLING_DOWN,
    }
