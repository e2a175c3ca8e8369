"""Every reply the service builds has the shape of its reply model in `protocol.messages`.

The handlers build plain values (dicts and lists, cheap to encode); the models are the
contract. Each command of the table is answered here in the states that shape its reply
differently, and the reply is validated against the spec's `reply_type` and dumped back:
a missing, extra or misnamed field fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from allocator.clock import FakeClock
from allocator.service import Service
from protocol.commands import get_spec
from tests.allocator.service_harness import call, running_service
from tests.allocator.test_service import SMALL, FakeConnection, _config


def _round_trip(command: str, value: Any) -> Any:
    adapter: TypeAdapter[Any] = TypeAdapter(get_spec(command).reply_type)
    model = adapter.validate_python(value)
    return adapter.dump_python(model, by_alias=True, mode="json")


def _plain(value: Any) -> Any:
    """A reply as JSON would carry it (tuples are lists on the wire)."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[Service]:
    async with running_service(_config(), db_url, FakeClock()) as running:
        yield running


async def test_every_v1_reply_matches_its_model(service: Service) -> None:
    conn = FakeConnection()
    queued_id = None
    replies: list[tuple[str, Any]] = []

    async def answer(command: str, *args: Any, **kwargs: Any) -> Any:
        value = await call(service, conn, command, *args, **kwargs)
        replies.append((command, value))
        return value

    await answer("version")
    await answer("allotment_version")
    job_id = await answer("create_job", 1, 1, owner="a")
    queued_id = await answer("create_job", 2, 1, owner="b")  # waits: the machine is taken
    never = await answer("create_job", 9, 9, owner="c")  # destroyed at once
    for some_id in (job_id, queued_id, never, 10**6):
        await answer("get_job_state", some_id)
        await answer("get_job_machine_info", some_id)
        await answer("job_keepalive", some_id)
    await answer("power_off_job_boards", job_id)
    await answer("power_on_job_boards", job_id)
    await answer("list_jobs")
    await answer("list_machines")
    await answer("get_board_position", "small", 1, 0, 2)
    await answer("get_board_position", "small", 9, 9, 9)
    await answer("get_board_at_position", "small", 0, 0, 5)
    await answer("where_is", machine="small", x=0, y=0, z=0)
    await answer("where_is", machine="small", chip_x=0, chip_y=0)
    await answer("where_is", machine="small", cabinet=0, frame=0, board=0)
    await answer("where_is", job_id=job_id, chip_x=0, chip_y=0)
    await answer("where_is", machine="small", x=7, y=7, z=0)
    await answer("destroy_job", job_id, "done")
    await answer("get_job_state", job_id)
    assert {command for command, _ in replies} >= {
        spec
        for spec in service.commands
        if service.commands.route(spec) is not None and service.commands.route(spec).family == "v1"  # type: ignore[union-attr]
    }
    for command, value in replies:
        assert _round_trip(command, value) == _plain(value), command


async def test_every_operator_reply_matches_its_model(db_url: str) -> None:
    token = "t0k3n"
    config = _config(server={**SMALL["server"], "operator_token": token})  # type: ignore[dict-item]
    async with running_service(config, db_url, FakeClock()) as service:
        conn = FakeConnection()
        job_id = await call(service, conn, "create_job", owner="a")
        replies = [
            ("admin_set_board_service",
             await call(service, conn, "admin_set_board_service", token, "small", 1, 0, 1,
                        False, "fan")),
            ("admin_set_link_service",
             await call(service, conn, "admin_set_link_service", token, "small", 1, 0, 2, 0,
                        False, "cable")),
            ("admin_drain_machine",
             await call(service, conn, "admin_drain_machine", token, "small", "maintenance")),
            ("admin_undrain_machine",
             await call(service, conn, "admin_undrain_machine", token, "small", "done")),
            ("admin_destroy_job",
             await call(service, conn, "admin_destroy_job", token, job_id, "runaway")),
            ("admin_audit_log", await call(service, conn, "admin_audit_log", token, 10)),
            ("admin_machine_state", await call(service, conn, "admin_machine_state", "small")),
        ]  # fmt: skip
        for command, value in replies:
            assert _round_trip(command, value) == _plain(value), command
