"""The operators' `allotment` subcommands: map, ps, where-is, service changes, drain, audit.

Each subcommand is an async function `(args, client, out) -> exit status` over any object with
the protocol client's `call` method, so tests pass a fake client and the real command passes
an `AllotmentClient`. `add_subparsers` mounts them under the `allotment` parser; the handler
it sets connects to `--host`/`--port` and runs the function::

    allotment map spinn-1200                 # coloured map in the terminal
    allotment map spinn-1200 --png map.png   # the same as an image file
    allotment board out spinn-1200 3 4 1 --reason "fan failed"
    allotment audit --limit 20

Admin subcommands need the operator token: `--token` or ALLOTMENT_OPERATOR_TOKEN.
Exit status: 0 done, 1 server or connection error, 2 usage error, 4 nothing at that place.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

from pydantic import TypeAdapter, ValidationError

import protocol.admin  # noqa: F401 - registers the admin commands with the command table
from allocator.cli import port_number
from allocator.mapview import render_png, render_text
from protocol.admin import AuditEntry, MachineState
from protocol.client import DEFAULT_PORT, AllotmentClient
from protocol.errors import ProtocolError
from protocol.messages import JobListEntry, WhereIsReply

__all__ = ["TOKEN_ENV", "OpsClient", "add_subparsers", "run_command"]

TOKEN_ENV: Final = "ALLOTMENT_OPERATOR_TOKEN"
"""Environment variable holding the operator token when `--token` is not given."""

_EXIT_ERROR: Final = 1
_EXIT_USAGE: Final = 2
_EXIT_NOTHING_THERE: Final = 4
_STATE_NAMES: Final = {0: "unknown", 1: "queue", 2: "power", 3: "ready", 4: "destroyed"}
_LINK_NAMES: Final = ("E", "NE", "N", "W", "SW", "S")


class OpsClient(Protocol):
    """What the subcommands need of a protocol client (`AllotmentClient` has it)."""

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """Send a command and return its raw `return` value."""
        ...


class UsageError(Exception):
    """The command line is incomplete (e.g. no operator token); exit status 2."""


_Command = Callable[[argparse.Namespace, OpsClient, TextIO], Awaitable[int]]


def _token(args: argparse.Namespace) -> str:
    token: str | None = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(f"this command needs the operator token: --token or {TOKEN_ENV}")
    return token


def _operator(args: argparse.Namespace) -> str:
    operator: str | None = getattr(args, "operator", None)
    if operator:
        return operator
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _print_audit(entry: AuditEntry, out: TextIO) -> None:
    when = datetime.fromtimestamp(entry.timestamp_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    who = f"{entry.operator or '?'}@{entry.peer}"
    out.write(f"#{entry.audit_id} {when} {who} {entry.action} {entry.target}: {entry.reason}\n")


# --- the subcommands ------------------------------------------------------------------------


async def _map(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    raw = await client.call("admin_machine_state", args.machine, token)
    state = MachineState.model_validate(raw)
    if args.png is not None:
        # A file write may stall on a slow disk; keep it off the event loop.
        try:
            await asyncio.to_thread(Path(args.png).write_bytes, render_png(state))
        except OSError as error:
            raise SystemExit(f"allotment: error: cannot write {args.png}: {error}") from None
        out.write(f"map of {state.name} written to {args.png}\n")
        return 0
    is_colour = not args.no_colour and "NO_COLOR" not in os.environ and out.isatty()
    out.write(render_text(state, is_colour=is_colour or args.colour))
    return 0


async def _ps(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    jobs = TypeAdapter(list[JobListEntry]).validate_python(await client.call("list_jobs"))
    rows = [("ID", "State", "Power", "Boards", "Machine", "Created at", "Keepalive", "Owner")]
    for job in jobs:
        if args.machine is not None and job.allocated_machine_name != args.machine:
            continue
        if args.owner is not None and job.owner != args.owner:
            continue
        created = datetime.fromtimestamp(job.start_time, UTC).strftime("%Y-%m-%d %H:%M:%S")
        power = "" if job.power is None else ("on" if job.power else "off")
        host = f" ({job.keepalivehost})" if job.keepalivehost else ""
        rows.append((
            str(job.job_id), _STATE_NAMES.get(job.state, str(job.state)), power,
            str(len(job.boards or ())), job.allocated_machine_name or "",
            created, "" if job.keepalive_s is None else f"{job.keepalive_s:g}", job.owner + host,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    return 0


async def _where_is(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    if args.board is not None:
        m, x, y, z = args.board
        raw = await client.call("where_is", machine=m, x=int(x), y=int(y), z=int(z))
    elif args.physical is not None:
        m, c, f, b = args.physical
        raw = await client.call("where_is", machine=m, cabinet=int(c), frame=int(f), board=int(b))
    elif args.chip is not None:
        m, x, y = args.chip
        raw = await client.call("where_is", machine=m, chip_x=int(x), chip_y=int(y))
    else:
        j, x, y = args.job_chip
        raw = await client.call("where_is", job_id=int(j), chip_x=int(x), chip_y=int(y))
    if raw is None:
        out.write("no boards at the specified location\n")
        return _EXIT_NOTHING_THERE
    found = WhereIsReply.model_validate(raw)
    c, f, b = found.physical
    lines = [
        ("Machine", found.machine),
        ("Physical location", f"cabinet {c}, frame {f}, board {b}"),
        ("Board coordinate", "({}, {}, {})".format(*found.logical)),
        ("Machine chip coordinates", "({}, {})".format(*found.chip)),
        ("Coordinates within board", "({}, {})".format(*found.board_chip)),
        ("Job using board", "none" if found.job_id is None else str(found.job_id)),
    ]
    if found.job_chip is not None:
        lines.append(("Coordinates within job", "({}, {})".format(*found.job_chip)))
    width = max(len(name) for name, _ in lines)
    out.writelines(f"{name.rjust(width)}: {value}\n" for name, value in lines)
    return 0


async def _admin(
    args: argparse.Namespace, client: OpsClient, out: TextIO, command: str, *call_args: Any
) -> int:
    raw = await client.call(
        command, _token(args), *call_args, reason=args.reason, operator=_operator(args)
    )
    _print_audit(AuditEntry.model_validate(raw), out)
    return 0


async def _board(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    in_service = args.direction == "in"
    board = (args.machine, args.x, args.y, args.z)
    return await _admin(args, client, out, "admin_set_board_service", *board, in_service)


async def _link(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    in_service = args.direction == "in"
    board = (args.machine, args.x, args.y, args.z)
    return await _admin(args, client, out, "admin_set_link_service", *board, args.link, in_service)


async def _drain(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    return await _admin(args, client, out, "admin_drain_machine", args.machine)


async def _undrain(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    return await _admin(args, client, out, "admin_undrain_machine", args.machine)


async def _destroy(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    return await _admin(args, client, out, "admin_destroy_job", args.job_id)


async def _audit(args: argparse.Namespace, client: OpsClient, out: TextIO) -> int:
    raw = await client.call("admin_audit_log", _token(args), args.limit)
    entries = TypeAdapter(list[AuditEntry]).validate_python(raw)
    if not entries:
        out.write("no operator actions recorded\n")
    for entry in entries:
        _print_audit(entry, out)
    return 0


async def run_command(
    args: argparse.Namespace, client: OpsClient, out: TextIO, err: TextIO | None = None
) -> int:
    """Run the operator subcommand that `args` names against `client`.

    Server errors and usage errors are written to `err` (default: `out`) and turned into the
    exit status; nothing is raised for them.
    """
    command: _Command = args.ops_command
    err = out if err is None else err
    try:
        return await command(args, client, out)
    except UsageError as error:
        err.write(f"allotment: {error}\n")
        return _EXIT_USAGE
    except ProtocolError as error:
        err.write(f"allotment: {error}\n")
        return _EXIT_ERROR
    except ValidationError as error:
        err.write(f"allotment: unexpected reply from the server: {error.error_count()} errors\n")
        return _EXIT_ERROR


# --- argparse -------------------------------------------------------------------------------


def _link_number(text: str) -> int:
    upper = text.upper()
    if upper in _LINK_NAMES:
        return _LINK_NAMES.index(upper)
    try:
        link = int(text)
    except ValueError:
        link = -1
    if not 0 <= link <= 5:  # the six link directions
        raise argparse.ArgumentTypeError(f"link {text!r} is not 0..5 or one of E NE N W SW S")
    return link


def _handle(args: argparse.Namespace) -> int:
    async def main() -> int:
        try:
            client = await AllotmentClient.connect(args.host, args.port, timeout_s=args.timeout)
        except (OSError, ProtocolError) as error:
            sys.stderr.write(f"allotment: cannot reach {args.host}:{args.port}: {error}\n")
            return _EXIT_ERROR
        async with client:
            return await run_command(args, client, sys.stdout, sys.stderr)

    return asyncio.run(main())


def _common(parser: argparse.ArgumentParser, *, is_admin: bool) -> None:
    host = os.environ.get("ALLOTMENT_HOST", "127.0.0.1")
    parser.add_argument("--host", "-H", default=host, help="server address (or ALLOTMENT_HOST)")
    parser.add_argument(
        "--port", "-P", type=port_number, default=DEFAULT_PORT, help="server TCP port"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--token", default=None,
                        help=f"operator token (default: ${TOKEN_ENV})")  # fmt: skip
    if is_admin:
        parser.add_argument("--reason", required=True, help="why (recorded in the audit log)")
        parser.add_argument("--operator", default=None, help="who (default: your user name)")
    parser.set_defaults(handler=_handle)


def _add_board_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=["out", "in"], help="out of service, or back in")
    parser.add_argument("machine")
    for axis in ("x", "y", "z"):
        parser.add_argument(axis, type=int)


def add_subparsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Mount the operator subcommands on the `allotment` parser's subparsers."""
    p = subparsers.add_parser("map", help="draw a machine's boards, jobs and dead boards")
    p.add_argument("machine")
    p.add_argument("--png", metavar="FILE", default=None, help="write a PNG image instead")
    p.add_argument("--no-colour", action="store_true", help="plain text, no ANSI colours")
    p.add_argument("--colour", action="store_true", help="ANSI colours even into a pipe")
    _common(p, is_admin=False)
    p.set_defaults(ops_command=_map)

    p = subparsers.add_parser("ps", help="list live jobs")
    p.add_argument("--machine", "-m", default=None)
    p.add_argument("--owner", "-o", default=None)
    _common(p, is_admin=False)
    p.set_defaults(ops_command=_ps)

    p = subparsers.add_parser("where-is", help="find a board or chip")
    form = p.add_mutually_exclusive_group(required=True)
    form.add_argument("--board", "-b", nargs=4, metavar=("MACHINE", "X", "Y", "Z"))
    form.add_argument("--physical", "-p", nargs=4, metavar=("MACHINE", "C", "F", "B"))
    form.add_argument("--chip", "-c", nargs=3, metavar=("MACHINE", "X", "Y"))
    form.add_argument("--job-chip", "-j", nargs=3, metavar=("JOB_ID", "X", "Y"))
    _common(p, is_admin=False)
    p.set_defaults(ops_command=_where_is)

    p = subparsers.add_parser("board", help="take a board out of service or back (operator)")
    _add_board_args(p)
    _common(p, is_admin=True)
    p.set_defaults(ops_command=_board)

    p = subparsers.add_parser("link", help="take a board link out of service or back (operator)")
    _add_board_args(p)
    p.add_argument("link", type=_link_number, help="0..5 or E NE N W SW S")
    _common(p, is_admin=True)
    p.set_defaults(ops_command=_link)

    for name, command, text in (
        ("drain", _drain, "stop allocating on a machine (operator)"),
        ("undrain", _undrain, "allocate on a drained machine again (operator)"),
    ):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("machine")
        _common(p, is_admin=True)
        p.set_defaults(ops_command=command)

    p = subparsers.add_parser("destroy", help="destroy any job with a reason (operator)")
    p.add_argument("job_id", type=int)
    _common(p, is_admin=True)
    p.set_defaults(ops_command=_destroy)

    p = subparsers.add_parser("audit", help="show recorded operator actions (operator)")
    p.add_argument("--limit", type=int, default=50)
    _common(p, is_admin=False)
    p.set_defaults(ops_command=_audit)


def _parse_for_tests(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="allotment")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)
