"""The service over a database that fails: nothing acknowledged that is not durable.

A transient failure is waited through (the request is answered once its change is
committed); a database that stays down breaks the store: the requests waiting and every
later one are refused with "database unavailable, try again", and the service stops so
that a restart resumes from the durable state. Run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from allocator.clock import FakeClock
from allocator.config import parse_config
from allocator.store import DatabaseUnavailableError
from tests.allocator.faulty_database import SECRET_PARAMETER, Faults
from tests.allocator.service_harness import call, running_service

CONFIG = parse_config(
    {
        "server": {"seconds_before_free": 0.0, "keepalive_check_s": 1.0},
        "power": {"power_on_delay_s": 5.0, "power_off_delay_s": 0.0},
        "machines": [
            {"name": "one", "single_board": {"bmp_ip": "10.9.0.0", "spinnaker_ip": "10.9.0.1"}}
        ],
    }
)


class Conn:
    peer_host = "10.0.0.7"


async def _state(service: Any, job_id: int) -> dict[str, Any]:
    result: dict[str, Any] = await call(service, Conn(), "get_job_state", job_id)
    return result


async def test_a_transient_failure_delays_the_reply_and_loses_nothing(db_url: str) -> None:
    faults = Faults()
    clock = FakeClock()
    async with running_service(
        CONFIG, db_url, clock, retry_backoff_s=0.001, wrap_database=faults.wrap
    ) as service:
        faults.db.fail_next(4)
        job_id = await call(service, Conn(), "create_job", owner="alice")
        assert faults.db.n_failed == 4
        assert (await _state(service, job_id))["state"] == 2
    async with running_service(CONFIG, db_url, clock) as service:
        assert (await _state(service, job_id))["state"] == 2


async def test_a_database_that_stays_down_refuses_requests_and_stops_the_service(
    db_url: str,
) -> None:
    faults = Faults()
    clock = FakeClock()
    stopped: list[BaseException | None] = []
    async with running_service(
        CONFIG,
        db_url,
        clock,
        stopped=stopped,
        retry_for_s=0.2,
        retry_backoff_s=0.01,
        wrap_database=faults.wrap,
    ) as service:
        kept = await call(service, Conn(), "create_job", owner="bob")
        faults.db.is_down = True
        with pytest.raises(DatabaseUnavailableError) as info:
            await call(service, Conn(), "create_job", owner="alice")
        assert str(info.value) == "database unavailable, try again"
        assert SECRET_PARAMETER not in str(info.value)
        # Nothing that was not durable is answered from memory: the job created in the
        # failed commit is unknown to readers, and every later request is refused.
        with pytest.raises(DatabaseUnavailableError):
            await call(service, Conn(), "job_keepalive", kept)
        with pytest.raises(DatabaseUnavailableError):
            await call(service, Conn(), "list_jobs")
        await asyncio.sleep(0)  # the service's own task sees the store break
    assert len(stopped) == 1
    assert isinstance(stopped[0], DatabaseUnavailableError), stopped
    async with running_service(CONFIG, db_url, clock) as service:
        assert (await _state(service, kept))["state"] == 2
        listed = await call(service, Conn(), "list_jobs")
        assert [job["owner"] for job in listed] == ["bob"]


async def test_a_failing_background_commit_stops_the_service_with_the_store_error(
    db_url: str,
) -> None:
    # The board controller finishing (power on done) is committed in the background; its
    # failure used to crash the service's task group with an ExceptionGroup.
    faults = Faults()
    clock = FakeClock()
    stopped: list[BaseException | None] = []
    async with running_service(
        CONFIG,
        db_url,
        clock,
        stopped=stopped,
        retry_for_s=0.1,
        retry_backoff_s=0.01,
        wrap_database=faults.wrap,
    ) as service:
        job_id = await call(service, Conn(), "create_job", owner="carol")
        faults.db.is_down = True
        await clock.advance(5.0)  # powered on: a background change to commit
        await asyncio.wait_for(service_store_broken(service), 5)
    assert isinstance(stopped[0], DatabaseUnavailableError), stopped
    async with running_service(CONFIG, db_url, clock) as service:
        assert (await _state(service, job_id))["state"] == 2  # POWER: as last committed


async def service_store_broken(service: Any) -> None:
    await service._store.wait_broken()
