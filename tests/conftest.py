"""Shared fixtures: real peers (PostgreSQL, an MQTT broker) and database URLs.

A peer named by an environment variable is used when set and reachable. Otherwise the test
is skipped with a visible reason, or fails when ALLOTMENT_REQUIRE_SERVICES=1 (CI):

* ALLOTMENT_TEST_PG_URL, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test; each test
  gets a fresh database of its own on that server, dropped afterwards.
* ALLOTMENT_TEST_MQTT, "host:port" of a broker such as Mosquitto.

Every process the tests start keeps the jobs' shared kernel cache (`jobqueue.kernel_cache`)
in one directory of the session, never in the user's cache: the suite compiles it once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

PG_ENV = "ALLOTMENT_TEST_PG_URL"
MQTT_ENV = "ALLOTMENT_TEST_MQTT"
REQUIRE_ENV = "ALLOTMENT_REQUIRE_SERVICES"


class BrokerAddress(NamedTuple):
    """Where the test MQTT broker listens."""

    host: str
    port: int


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)")
    pytest.skip(reason)


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    # A private loop: fixtures set up outside the test's loop, and the global one is untouched.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def _asyncpg_dsn(sqlalchemy_url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def _admin(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncio.wait_for(asyncpg.connect(dsn), 5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def _session_kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's kernel cache root, named to every process the tests start."""
    root = tmp_path_factory.mktemp("kernel-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALLOTMENT_KERNEL_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL URL from ALLOTMENT_TEST_PG_URL, checked once per session."""
    url = os.environ.get(PG_ENV)
    if not url:
        _unavailable(f"{PG_ENV} is not set; PostgreSQL tests skipped")
        raise AssertionError("unreachable")
    try:
        _run(_admin(_asyncpg_dsn(url), "SELECT 1"))
    except Exception as error:
        _unavailable(f"PostgreSQL at {PG_ENV} is unreachable: {error!r}")
    return url


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    from sqlalchemy.engine import make_url

    name = f"allotment_test_{uuid.uuid4().hex[:12]}"
    admin = _asyncpg_dsn(pg_server_url)
    _run(_admin(admin, f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server_url).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL of an SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'allotment.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once for SQLite and once for PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(scope="session")
def mqtt_broker() -> BrokerAddress:
    """The MQTT broker named by ALLOTMENT_TEST_MQTT ("host:port"), checked once."""
    spec = os.environ.get(MQTT_ENV)
    if not spec:
        _unavailable(f"{MQTT_ENV} is not set; MQTT tests skipped")
        raise AssertionError("unreachable")
    host, _, port_text = spec.rpartition(":")
    try:
        address = BrokerAddress(host or "127.0.0.1", int(port_text))
        with socket.create_connection(address, timeout=2):
            pass
    except (OSError, ValueError) as error:
        _unavailable(f"MQTT broker {spec} from {MQTT_ENV} is unusable: {error!r}")
        raise AssertionError("unreachable") from error
    return address
