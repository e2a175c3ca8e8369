"""The server process: build the pieces from the configuration and run them until a signal.

SIGTERM and SIGINT stop the server cleanly (connections closed, the store flushed and
closed); SIGHUP reloads the configuration file, keeping the old one if the new one is bad
(the `[metrics]` and `[mqtt]` tables are read at start only).

    Store --commit latency--> Metrics <--requests-- Server <--lines-- clients
      ^                         ^   ^                  ^
      |                         |   +-- Reporter <-----+-- Service (after each commit)
      +------- Service ---------+          |
                (queue waits, expiries,    +--> EventPublisher --> MQTT broker
                 power transitions)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path

from allocator.clock import SystemClock
from allocator.config import ServerConfig, default_config, load_config
from allocator.dispatch.attach import attach as attach_dispatch
from allocator.errors import AllocatorError
from allocator.events import EventPublisher
from allocator.metrics import Metrics
from allocator.reporting import Reporter
from allocator.server import Server
from allocator.service import Service
from allocator.store import Store
from protocol.commands import command_table

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
    metrics = Metrics(commands=command_table())
    try:
        publisher = (
            EventPublisher(
                config.mqtt.url, config.mqtt.topic_prefix, config.mqtt.queue_size, metrics
            )
            if config.mqtt.url
            else None
        )
        store = await Store.open(
            db_url, on_commit=lambda seconds, _n_changes: metrics.commit_latency(seconds)
        )
    except AllocatorError as error:
        log.error("cannot start: %s", error)
        return 2
    try:
        async with contextlib.AsyncExitStack() as stack:
            if config.metrics.port:
                try:
                    await stack.enter_async_context(
                        metrics.endpoint(config.metrics.address, config.metrics.port)
                    )
                except OSError as error:
                    log.error(
                        "cannot start: metrics endpoint %s:%d: %s",
                        config.metrics.address,
                        config.metrics.port,
                        error,
                    )
                    return 2
            return await _run(config, config_path, store, host, port, db_url, metrics, publisher)
    finally:
        await store.close()


async def _run(
    config: ServerConfig,
    config_path: Path | None,
    store: Store,
    host: str,
    port: int,
    db_url: str,
    metrics: Metrics,
    publisher: EventPublisher | None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    service = Service(config, store, SystemClock(), observer=metrics)
    server = Server(
        service,
        max_line_bytes=config.server.max_line_bytes,
        max_connections=config.server.max_connections,
        metrics=metrics,
    )
    service.add_listener(server.broadcast)
    reporter = Reporter(service, metrics=metrics, publisher=publisher)
    service.add_listener(reporter.on_change)
    dispatch = attach_dispatch(
        service, config.dispatch, registry=metrics.registry, publisher=publisher
    )

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
            dispatch_started = asyncio.Event()
            dispatch_task = tg.create_task(
                dispatch.run(on_started=dispatch_started.set), name="dispatch"
            )
            started = tg.create_task(dispatch_started.wait())
            await asyncio.wait([dispatch_task, started], return_when=asyncio.FIRST_COMPLETED)
            if dispatch_task.done():
                service_task.cancel()
                started.cancel()
                return 1
            reporter.start()
            _settle_garbage_collector()
            publisher_task = None
            if publisher is not None:
                publisher_task = tg.create_task(publisher.run(), name="mqtt")
            server_task = tg.create_task(server.serve(host, port, on_ready=ready))
            await stop.wait()
            log.info("stopping")
            server_task.cancel()
            dispatch_task.cancel()
            service_task.cancel()
            if publisher_task is not None:
                publisher_task.cancel()
            reporter.close()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return 0


_GC_THRESHOLDS = (20_000, 20, 20)
"""Collector thresholds while serving: a request allocates a few dozen short-lived objects,
and the default (700, 10, 10) ran a collection every few requests under load."""


def _settle_garbage_collector() -> None:
    """Keep what start-up built (machines, tables, models) out of every future collection.

    `gc.freeze` moves the objects alive now to a generation the collector never scans, so a
    full collection costs what the live jobs cost, not the machine description; with fewer
    collections this took ~8 % off the service's CPU time per request.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def _redacted(url: str) -> str:
    """A database URL without its password, for the log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
