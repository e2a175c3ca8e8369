"""Running a `Service` without sockets for the service tests: start, call, settle, stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from allocator.clock import FakeClock
from allocator.config import ServerConfig
from allocator.service import Service
from allocator.store import Store
from protocol.commands import bind


@contextlib.asynccontextmanager
async def running_service(
    config: ServerConfig,
    db_url: str,
    clock: FakeClock,
    *,
    wall_clock: Callable[[], float] = time.time,
    stopped: list[BaseException | None] | None = None,
    **store_options: Any,
) -> AsyncIterator[Service]:
    """A service on a freshly opened store, restored and running until the block ends.

    Args:
        stopped: if given, receives what ended the service's run (None: cancelled at the
            end of the block) instead of the test failing on it.
        store_options: passed to `Store.open`.
    """
    store = await Store.open(db_url, **store_options)
    service = Service(config, store, clock, wall_clock=wall_clock)
    started = asyncio.Event()
    task = asyncio.create_task(service.run(on_started=started.set))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield service
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if stopped is not None:
                stopped.append(None)
        except Exception as error:
            if stopped is None:
                raise
            stopped.append(error)
        await store.close()


async def call(service: Service, conn: Any, command: str, *args: Any, **kwargs: Any) -> Any:
    """Answer one command as the server would, with positional and keyword arguments."""
    handler = service.handler_for(command)
    assert handler is not None, command
    return await handler(bind(command, list(args), kwargs), conn)


async def settle(clock: FakeClock) -> None:
    """Let timers and background commits run; commits wait on the database thread."""
    for _ in range(20):
        await clock.settle()
        await asyncio.sleep(0.005)
