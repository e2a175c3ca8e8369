"""The server process: build the pieces from the configuration and run them until a signal.

SIGTERM and SIGINT stop the server cleanly (connections closed, the store flushed and
closed); SIGHUP reloads the configuration file, keeping the old one if the new one is bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from allocator.clock import SystemClock
from allocator.config import ServerConfig, default_config, load_config
from allocator.errors import AllocatorError
from allocator.server import Server
from allocator.service import Service
from allocator.store import Store

__all__ = ["serve"]

log = logging.getLogger("allotment")


def _load(config_path: Path | None) -> ServerConfig:
    return default_config() if config_path is None else load_config(config_path)


async def serve(*, host: str, port: int, config_path: Path | None, db_url: str) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit status."""
    try:
        config = _load(config_path)
    except AllocatorError as error:
        log.error("cannot start: %s", error)
        return 2
    try:
        store = await Store.open(db_url)
    except AllocatorError as error:
        log.error("cannot start: %s", error)
        return 2
    try:
        return await _run(config, config_path, store, host, port, db_url)
    finally:
        await store.close()


async def _run(
    config: ServerConfig, config_path: Path | None, store: Store, host: str, port: int, db_url: str
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    service = Service(config, store, SystemClock())
    server = Server(
        service,
        max_line_bytes=config.server.max_line_bytes,
        max_connections=config.server.max_connections,
    )
    service.add_listener(server.broadcast)

    def reload() -> None:
        if config_path is None:
            log.info("SIGHUP: no --config file to reload; the embedded machine stays")
            return
        try:
            new = load_config(config_path)
        except AllocatorError as error:
            log.error("SIGHUP: configuration rejected, keeping the old one: %s", error)
            return
        service.reconfigure(new)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)

    service_started = asyncio.Event()

    def ready(addresses: list[tuple[str, int]]) -> None:
        where = ", ".join(f"{h}:{p}" for h, p in addresses)
        machines = ", ".join(config_machine.name for config_machine in config.machines)
        log.info(
            "allotment ready: listening on %s (machines: %s; database: %s)",
            where,
            machines or "none",
            _redacted(db_url),
        )

    try:
        async with asyncio.TaskGroup() as tg:
            service_task = tg.create_task(service.run(on_started=service_started.set))
            started = tg.create_task(service_started.wait())
            await asyncio.wait([service_task, started], return_when=asyncio.FIRST_COMPLETED)
            if service_task.done():
                return 1
            server_task = tg.create_task(server.serve(host, port, on_ready=ready))
            await stop.wait()
            log.info("stopping")
            server_task.cancel()
            service_task.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return 0


def _redacted(url: str) -> str:
    """A database URL without its password, for the log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
