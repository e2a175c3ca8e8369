"""The `allotment` command line: `serve` runs the server; the other subcommands serve operators."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from allocator.logoutput import QueuedStreamHandler, ServerFormatter
from jobqueue import cli as batch_cli

__all__ = ["main"]

DEFAULT_PORT = 22244
DEFAULT_DB_URL = "sqlite:///allotment.db"
DEFAULT_BATCH_PORT = batch_cli.DEFAULT_BATCH_PORT


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("allotment")
    except PackageNotFoundError:
        return "0+unknown"


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the allocation server",
        description="Run the allocation server until SIGTERM or SIGINT; SIGHUP reloads --config.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help="TCP port, 0 for any free port (default %(default)s)",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="machine and server configuration (TOML); default: the embedded 1,200-board machine",
    )
    serve.add_argument(
        "--db",
        default=os.environ.get("ALLOTMENT_DB", DEFAULT_DB_URL),
        help="SQLAlchemy database URL (default: %(default)s, an SQLite file in the current"
        " directory; or postgresql+asyncpg://user@host/db)",
    )
    batch = serve.add_argument_group("batch jobs (the EBRAINS-style job service, docs/batch.md)")
    batch.add_argument(
        "--batch-port",
        type=port_number,
        default=DEFAULT_BATCH_PORT,
        help="HTTP port of the batch service, 0 for any free port (default %(default)s)",
    )
    which = batch.add_mutually_exclusive_group()
    which.add_argument("--no-batch", action="store_true", help="run the allocation server alone")
    which.add_argument(
        "--batch-only",
        action="store_true",
        help="run the batch service alone, its jobs using the allocation server at --port",
    )
    batch.add_argument(
        "--batch-virtual",
        action="store_true",
        help="batch jobs' PyNN scripts run virtually, in the job's process (no boards)",
    )
    batch_cli.add_runner_options(batch)
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allotment",
        description="allotment: a spalloc-compatible allocation server for SpiNNaker machines",
    )
    parser.add_argument("--version", action="version", version=f"allotment {_package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(subparsers)
    try:
        from allocator import opscli
    except ImportError:  # pragma: no cover - the operator commands are optional at import
        pass
    else:
        opscli.add_subparsers(subparsers)
    batch_cli.add_subparsers(subparsers)
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (about twice the requests per second), else asyncio's."""
    if os.environ.get("ALLOTMENT_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _configure_logging(level: str) -> None:
    """Log to stderr, one line per record, without what the format does not show.

    The server logs every job's activity at INFO; the logging HOWTO's optimisations (no
    caller lookup, no thread or process names) halve the cost of a line.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Formatted and written by a thread of its own, in batches (allocator.logoutput).
    handler = QueuedStreamHandler(sys.stderr)
    handler.setFormatter(ServerFormatter())
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])


def _flush_logs() -> None:
    """Write the queued log lines before a line printed outside logging."""
    for handler in logging.root.handlers:
        handler.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `allotment` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        _configure_logging(args.log_level)
        return _serve(args)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"unknown command {args.command!r}")
    try:
        result: int = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`allotment jobs | head`): what it read was enough. Python
        # would flush stdout again at exit and print a traceback; point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


def _batch_arguments(args: argparse.Namespace, spalloc_port: int) -> list[str]:
    """The command line of the batch service child, from `serve`'s options."""
    return [
        *("--host", args.host, "--port", str(args.batch_port), "--db", args.db),
        *("--spalloc-host", args.host, "--spalloc-port", str(spalloc_port)),
        *("--jobs-dir", str(args.jobs_dir), "--runners", str(args.runners)),
        *("--job-timeout-h", str(args.job_timeout_h)),
        *("--job-memory-mb", str(args.job_memory_mb)),
        *("--job-output-mb", str(args.job_output_mb)),
        *("--standby-jobs", str(args.standby_jobs)),
        *("--standby-boards", str(args.standby_boards)),
        *(["--virtual"] if args.batch_virtual else []),
        *(["--no-warmup"] if args.no_warmup else []),
        *(["--kernel-cache", str(args.kernel_cache)] if args.kernel_cache else []),
    ]


def _serve(args: argparse.Namespace) -> int:
    """`allotment serve`: the allocation server and, in a process of its own, the batch service."""
    if args.batch_only:
        from jobqueue.service import serve as serve_batch

        config = batch_cli.runner_config(args, None if args.batch_virtual else args.host, args.port)
        return serve_batch(host=args.host, port=args.batch_port, db_url=args.db, runner=config)
    from allocator.app import StartupError, serve

    children = []

    def start_batch(addresses: list[tuple[str, int]]) -> str:
        # Runs once, when the allocation server listens (the batch runner needs its port);
        # the child's start-up (about a second) happens before the ready line is logged.
        from jobqueue.process import BatchSupervisor

        child = BatchSupervisor(_batch_arguments(args, addresses[0][1]))
        children.append(child)
        return f"batch service at {child.start()}"

    def stop_batch() -> None:
        while children:
            children.pop().stop()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(
                serve(
                    host=args.host,
                    port=args.port,
                    config_path=args.config,
                    db_url=args.db,
                    ready_hook=None if args.no_batch else start_batch,
                    stopping_hook=stop_batch,
                    also_listening=(
                        None
                        if args.no_batch or not args.batch_port
                        else (args.batch_port, "the batch service")
                    ),
                )
            )
    except StartupError as error:
        _flush_logs()
        print(f"allotment: cannot start: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        stop_batch()


if __name__ == "__main__":
    sys.exit(main())
