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
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from allocator.clock import SystemClock
from allocator.config import ServerConfig, default_config, load_config
from allocator.dispatch.attach import attach as attach_dispatch
from allocator.errors import AllocatorError, ConfigError, StoreError
from allocator.events import EventPublisher
from allocator.metrics import Metrics
from allocator.reporting import Reporter
from allocator.server import Server
from allocator.service import Service, known_commands
from allocator.store import Database, DatabaseUnavailableError, Store
from protocol.dispatch import DISPATCH_COMMAND_NAMES

__all__ = ["EXIT_DATABASE_UNAVAILABLE", "StartupError", "serve"]

log = logging.getLogger("allotment")


class StartupError(AllocatorError):
    """The server cannot start; the message names what (an address, a file, a database).

    Raised before anything is written: the command line prints it as one line and exits 2.
    """


EXIT_DATABASE_UNAVAILABLE = 3
"""Exit status when the database stays unavailable: the supervisor restarts the server."""


def _load(config_path: Path | None) -> ServerConfig:
    config = default_config() if config_path is None else load_config(config_path)
    if not config.machines:
        # A server with nothing to allocate answers every create_job with "no suitable
        # machines": more likely a mistyped table than what the operator meant.
        raise StartupError(f"configuration {config_path} has no [[machines]]: nothing to allocate")
    return config


async def serve(
    *,
    host: str,
    port: int,
    config_path: Path | None,
    db_url: str,
    wrap_database: Callable[[Database], Database] | None = None,
    ready_hook: Callable[[list[tuple[str, int]]], str] | None = None,
    stopping_hook: Callable[[], None] | None = None,
    also_listening: tuple[int, str] | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit status.

    Everything that can fail at start is tried before the database is opened (so a failed
    start leaves no new database behind): the configuration, the listening socket, the
    port `also_listening` names (another process of the service will listen there, on the
    same host), the metrics endpoint.

    Args:
        wrap_database: wraps the store's database (tests inject failures with it).
        ready_hook: called once with the listening addresses before the ready line is
            logged; what it returns is added to that line (`allotment serve` starts the
            batch service there).
        stopping_hook: called (in a thread) once a stop is asked for, while the server still
            answers (`allotment serve` stops the batch service there, which frees its
            standby jobs over the protocol).

    Raises:
        StartupError: the configuration, an address or the database is unusable.
    """
    try:
        config = _load(config_path)
    except ConfigError as error:
        raise StartupError(str(error)) from error
    metrics = Metrics(commands=known_commands() | DISPATCH_COMMAND_NAMES)
    server = Server(
        None,
        max_line_bytes=config.server.max_line_bytes,
        max_connections=config.server.max_connections,
        idle_timeout_s=config.server.idle_timeout_s,
        metrics=metrics,
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            await server.bind(host, port)
        except OSError as error:
            raise StartupError(f"cannot listen on {_address(host, port)}: {_why(error)}") from error
        stack.push_async_callback(server.unbind)
        if also_listening is not None:
            check_listenable(host, *also_listening)
        metrics_port = config.metrics.bind_port
        if metrics_port is not None:
            address = _address(config.metrics.address, metrics_port)
            try:
                await stack.enter_async_context(
                    metrics.endpoint(config.metrics.address, metrics_port)
                )
            except OSError as error:
                raise StartupError(f"metrics endpoint {address}: {_why(error)}") from error
        publisher = (
            EventPublisher(
                config.mqtt.url, config.mqtt.topic_prefix, config.mqtt.queue_size, metrics
            )
            if config.mqtt.url
            else None
        )
        try:
            store = await Store.open(
                db_url,
                retry_for_s=config.server.database_retry_s,
                on_commit=lambda seconds, _n_changes: metrics.commit_latency(seconds),
                wrap_database=wrap_database,
            )
        except StoreError as error:
            raise StartupError(str(error)) from error
        stack.push_async_callback(store.close)
        try:
            return await _run(
                config,
                config_path,
                store,
                server,
                db_url,
                metrics,
                publisher,
                ready_hook,
                stopping_hook,
            )
        except ExceptionGroup as group:
            failure, rest = group.split(StoreError)
            if failure is None or rest is not None:
                raise
            cause = _first_leaf(failure)
            detail = cause.detail if isinstance(cause, DatabaseUnavailableError) else str(cause)
            log.critical(
                "database %s unavailable, exiting with status %d so that a restart resumes"
                " from the durable state: %s",
                _redacted(db_url),
                EXIT_DATABASE_UNAVAILABLE,
                detail,
            )
            return EXIT_DATABASE_UNAVAILABLE
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


def _first_leaf(group: BaseExceptionGroup[StoreError]) -> StoreError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def check_listenable(host: str, port: int, what: str) -> None:
    """Make sure `host:port` can be bound now, before anything is made (a port another
    process of the service will listen on).

    Raises:
        StartupError: naming the address and `what` listens there.
    """
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as error:
        raise StartupError(
            f"cannot listen on {_address(host, port)} ({what}): {_why(error)}"
        ) from error


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(error: OSError) -> str:
    """An OS error as one short phrase ("address already in use")."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return (error.strerror or str(error)).lower()
    # asyncio words a failed bind "error while attempting to bind on address ...".
    return os.strerror(error.errno).lower()


async def _run(
    config: ServerConfig,
    config_path: Path | None,
    store: Store,
    server: Server,
    db_url: str,
    metrics: Metrics,
    publisher: EventPublisher | None,
    ready_hook: Callable[[list[tuple[str, int]]], str] | None = None,
    stopping_hook: Callable[[], None] | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    service = Service(config, store, SystemClock(), observer=metrics)
    server.set_dispatcher(service)
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
        if not new.machines:
            log.warning(
                "SIGHUP: configuration %s has no [[machines]]: nothing to allocate", config_path
            )
        try:
            service.reconfigure(new)
        except AllocatorError as error:
            log.error("SIGHUP: configuration rejected, keeping the old one: %s", error)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)

    service_started = asyncio.Event()
    hook_failed: list[Exception] = []

    def ready(addresses: list[tuple[str, int]]) -> None:
        where = ", ".join(_address(h, p) for h, p in addresses)
        machines = ", ".join(config_machine.name for config_machine in config.machines)
        extra = ""
        if ready_hook is not None:
            try:
                extra = f"; {ready_hook(addresses)}"
            except Exception as error:
                log.error("cannot start: %s", error)
                hook_failed.append(error)
                stop.set()
                return
        log.info(
            "allotment ready: listening on %s (machines: %s; database: %s%s)",
            where,
            machines or "none",
            _redacted(db_url),
            extra,
        )

    try:
        async with asyncio.TaskGroup() as tg:
            service_task = tg.create_task(service.run(on_started=service_started.set))
            started = tg.create_task(service_started.wait())
            await asyncio.wait([service_task, started], return_when=asyncio.FIRST_COMPLETED)
            if service_task.done():
                started.cancel()
                service_task.result()  # raises what stopped it
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
            server_task = tg.create_task(server.serve(on_ready=ready))
            await stop.wait()
            log.info("stopping")
            if stopping_hook is not None:
                # blocking (it waits for child processes): off the loop, which keeps serving
                await asyncio.to_thread(stopping_hook)
            server_task.cancel()
            dispatch_task.cancel()
            service_task.cancel()
            if publisher_task is not None:
                publisher_task.cancel()
            reporter.close()
    finally:
        reporter.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return 2 if hook_failed else 0


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
