"""Running a `Service` without sockets for the service tests: start, call, settle, stop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from allocator.clock import FakeClock
from allocator.config import ServerConfig
from allocator.service import Service
from allocator.store import Store
from protocol.codec import EncodedJson
from protocol.commands import bind_spec


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
    route = service.route(command)
    assert route is not None, command
    result = route.handler(bind_spec(route.spec, list(args), kwargs), conn)
    if inspect.isawaitable(result):
        # In a task of its own, as the server runs it.
        result = await asyncio.ensure_future(result)
    if isinstance(result, EncodedJson):  # encoded once, as the client reads it
        return result.decode()
    return result


async def settle(service: Service, clock: FakeClock) -> None:
    """Let woken timers run, then wait until every change they made is committed."""
    await clock.settle()
    await service.state.settled()
