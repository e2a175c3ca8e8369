"""Load benchmark of the original spalloc server, under exactly the load of `server_load.py`.

allotment aims at 1.5 times the requests/s of the original `spalloc_server` or more
(1!7.0.0 from PyPI). This script measures the original on this machine: it runs it as a separate
process from an interpreter where it is installed (it is GPL; nothing here imports it), on the
machine and settings `server_load.py` gives allotment (the 1,200-board ``spinn-1200``, boards
free again at once, 1,200 retired jobs kept), and drives it with `server_load.py`'s own clients.
It prints ONE JSON line with `server_load.py`'s figures, ``"server"`` naming the original, and
``"bmp_datagrams"``, the SCP commands the fake BMPs answered (they run on the clients' event loop,
so their CPU time counts in ``client_cpu_us_per_request``). `--compare N` alternates N runs of
the original and N of allotment (the machine's speed drifts over minutes, so the two must take
turns), one line each, then a line with the median requests/s of both and their ratio.

    python3 -m venv DIR && DIR/bin/pip install 'spalloc_server==1!7.0.0'
    python bench/reference_server.py --reference-python DIR/bin/python --seconds 20
    SPALLOC_SERVER_PYTHON=DIR/bin/python python bench/reference_server.py --compare 5

The original powers boards by SCP over UDP, to port 17893 of one BMP per frame (50 frames). The
generated config puts frame f of cabinet c at 127.N.(5c + f).0, N the first range (from 1) whose
port is free, and this script answers for each of those BMPs: every command succeeds. A
datagram and its reply:

    byte  0    2             10    12    14     18     22     26
          | 00 | SDP header  | cmd | seq | arg1 | arg2 | arg3 |
          | 00 | SDP header  | 0x80| seq | data ...               (0x80: RC_OK)

Version (cmd 0) answers a Spin5 BMP; an FPGA register read (cmd 17) answers the FPGA's number,
which the original asks for in arg3 and checks against the low bits of the value read.

Two things differ from allotment's run. The original's jobs stay in state power: each frame's
BMP thread sleeps 5 s (in spinnman) after every power-on, so its BMP queue only grows, while
allotment models power with no delay; the requests are the same. And the original listens with
a backlog of 5, so a few of the clients connect up to a second late, which matters less the
longer the run.

Linux only: Linux routes all of 127.0.0.0/8 to loopback; other systems need an alias per
address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import tomllib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from mix_load import DEFAULT_MIX, parse_mix, run_mix
from server_load import SERVER_TOML, own_server, run_load, run_on_uvloop

from allocator.config import parse_config
from allocator.machine import Machine, standard_ips

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
READY_LINE = "Server running."
HOW_TO_INSTALL = (
    "make one with: python3 -m venv DIR && DIR/bin/pip install 'spalloc_server==1!7.0.0', "
    "then pass --reference-python DIR/bin/python or set SPALLOC_SERVER_PYTHON"
)

BMP_PORT = 17893
CMD_VER = 0
CMD_LINK_READ = 17
RC_OK = 0x80
_COMMAND = struct.Struct("<HH")  # cmd, seq at byte 10; result, seq in the reply
_HEADER_BYTES = 10  # 2 bytes of padding and the SDP header, echoed in the reply
_ARG3 = slice(22, 26)
_VERSION_DATA = struct.pack("<BBBBHHI", 0, 0, 0, 0, 0, 210, 0) + b"BC&MP/Spin5-BMP\0"

REFERENCE_CONFIG = """\
# The original spalloc server's configuration, written by allotment's bench/reference_server.py:
# the machine and settings bench/server_load.py gives allotment, BMPs on loopback.
{imports}configuration = Configuration(
    machines=[
        Machine.with_standard_ips(
            {name!r},
            tags=frozenset({tags!r}),
            width={width},
            height={height},
            dead_boards={dead_boards},
            dead_links={dead_links},
            board_locations={{{board_locations}}},
            base_ip={base_ip!r},
        )
    ],
    ip={host!r},
    timeout_check_interval={timeout_check_interval!r},
    max_retired_jobs={max_retired_jobs},
    seconds_before_free={seconds_before_free!r},
)
"""


class FakeBmp(asyncio.DatagramProtocol):
    """One frame's BMP: answers every SCP command with success.

    Attributes:
        n_replies: Datagrams answered so far.
    """

    def __init__(self) -> None:
        self.n_replies = 0
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._transport is None or len(data) < _HEADER_BYTES + _COMMAND.size:
            return
        command, seq = _COMMAND.unpack_from(data, _HEADER_BYTES)
        if command == CMD_VER:
            body = _VERSION_DATA
        elif command == CMD_LINK_READ:
            body = data[_ARG3]
        else:
            body = b""
        self._transport.sendto(data[:_HEADER_BYTES] + _COMMAND.pack(RC_OK, seq) + body, addr)
        self.n_replies += 1

    def __repr__(self) -> str:
        return f"<FakeBmp n_replies={self.n_replies}>"


async def _bind_bmps(addresses: list[str]) -> list[tuple[asyncio.DatagramTransport, FakeBmp]]:
    """One fake BMP per address, or none: any that bound are closed when one cannot bind."""
    loop = asyncio.get_running_loop()
    bound: list[tuple[asyncio.DatagramTransport, FakeBmp]] = []
    try:
        for address in addresses:
            # Bound here rather than by the loop, so that a taken port is the plain OSError
            # (uvloop wraps it in one without an errno).
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((address, BMP_PORT))
            except OSError:
                sock.close()
                raise
            transport, bmp = await loop.create_datagram_endpoint(FakeBmp, sock=sock)
            bound.append((transport, bmp))
    except BaseException:
        for transport, _ in bound:
            transport.close()
        raise
    return bound


@contextlib.asynccontextmanager
async def fake_bmps(machine: Machine) -> AsyncIterator[tuple[str, list[FakeBmp]]]:
    """Answer for every BMP of `machine`, on the first 127.N.0.0 range whose port is free.

    A range is skipped when another process (another run of this script) holds the port on
    one of its addresses. Yields the range's base address, for the config, and the BMPs.
    """
    for n in range(1, 255):
        base_ip = f"127.{n}.0.0"
        bmp_ips, _ = standard_ips(machine.name, machine.board_locations, base_ip=base_ip)
        try:
            bound = await _bind_bmps(sorted(set(bmp_ips.values())))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                continue
            raise
        break
    else:
        raise SystemExit(f"UDP port {BMP_PORT} is taken on every 127.N.0.0 range")
    try:
        yield base_ip, [bmp for _, bmp in bound]
    finally:
        for transport, _ in bound:
            transport.close()


def reference_config(base_ip: str) -> str:
    """The original server's config (Python) for the machine and settings of `server_load.py`.

    Args:
        base_ip: Where the machine's address range starts; its BMPs are at the standard
            offsets from it.
    """
    config = parse_config(tomllib.loads(SERVER_TOML))
    (machine,) = config.machines
    locations = ", ".join(
        f"{tuple(board)!r}: {tuple(slot)!r}"
        for board, slot in sorted(machine.board_locations.items())
    )
    dead_boards = sorted(tuple(board) for board in machine.dead_boards)
    dead_links = sorted(
        f"({board.x}, {board.y}, {board.z}, Links.{link.name.lower()})"
        for board, link in machine.dead_links
    )
    return REFERENCE_CONFIG.format(
        imports="from spalloc_server.links import Links\n\n" if dead_links else "",
        name=machine.name,
        tags=sorted(machine.tags),
        width=machine.width_triads,
        height=machine.height_triads,
        dead_boards=f"set({dead_boards!r})",
        dead_links=f"{{{', '.join(dead_links)}}}" if dead_links else "set()",
        board_locations=locations,
        base_ip=base_ip,
        host=HOST,
        timeout_check_interval=config.server.keepalive_check_s,
        max_retired_jobs=config.server.max_retired_jobs,
        seconds_before_free=config.server.seconds_before_free,
    )


def reference_version(python: str | None) -> str:
    """The version of `spalloc_server` installed for `python`.

    Raises:
        SystemExit: There is no such interpreter, or it cannot import `spalloc_server`; the
            message says how to make one that can.
    """
    if not python:
        raise SystemExit(f"no interpreter with spalloc_server given; {HOW_TO_INSTALL}")
    probe = "import importlib.metadata, spalloc_server.server\n"
    probe += "print(importlib.metadata.version('spalloc_server'))"
    try:
        # In a scratch directory: importing the server creates its job log in the current one.
        with tempfile.TemporaryDirectory(prefix="spalloc-server-probe-") as scratch:
            found = subprocess.run(
                [python, "-c", probe],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=scratch,
            )
    except OSError as error:
        raise SystemExit(f"cannot run {python}: {error.strerror}; {HOW_TO_INSTALL}") from None
    if found.returncode != 0:
        why = (found.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{python} cannot import spalloc_server ({why}); {HOW_TO_INSTALL}")
    return found.stdout.strip()


def _free_port() -> int:
    """A TCP port free on `HOST` now (the original server cannot be asked to pick one)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


async def _read_until_ready(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while line := (await stream.readline()).decode("utf-8", "replace"):
        tail.append(line)
        if READY_LINE in line:
            return
    raise SystemExit("the original server exited before it ran:\n" + "".join(tail))


async def _drain(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    """Keep reading the server's log (a line per client connected) so it never blocks."""
    while line := await stream.readline():
        tail.append(line.decode("utf-8", "replace"))


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End the server at once (SIGTERM), or kill it.

    Not Ctrl+C, its clean stop: that first works off every queued BMP command, and spinnman
    sleeps 5 s after each power-on, so the queue this load leaves would take hours.
    """
    if process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


async def load_reference(
    python: str,
    directory: Path,
    n_clients: int,
    seconds: float,
    mix: str | None = None,
    until_ready: bool = False,
) -> dict[str, Any]:
    """Start the original server with its BMPs faked, run the clients, stop it.

    Args:
        python: Interpreter where `spalloc_server` is installed.
        directory: Scratch directory for its config.
        n_clients: Concurrent clients, as `server_load.py --clients`.
        seconds: How long the clients run.
    """
    (machine,) = parse_config(tomllib.loads(SERVER_TOML)).machines
    async with fake_bmps(machine) as (base_ip, bmps):
        config_path = directory / "spalloc_server_config.py"
        # A 40 kB file: written off the loop all the same, the fake BMPs are already answering.
        await asyncio.to_thread(config_path.write_text, reference_config(base_ip))
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            python,
            "-m",
            "spalloc_server.server",
            str(config_path),
            "--cold-start",
            "--port",
            str(port),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        tail: deque[str] = deque(maxlen=40)
        try:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await _read_until_ready(process.stderr, tail)
            except TimeoutError:
                raise SystemExit(
                    f"the original server did not run within {READY_TIMEOUT_S:.0f} s:\n"
                    + "".join(tail)
                ) from None
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_drain(process.stderr, tail))
                try:
                    if mix is None:
                        figures = await run_load(HOST, port, n_clients, seconds, process.pid)
                    else:
                        # In processes of their own, from a thread: this loop answers the BMPs.
                        figures = await asyncio.to_thread(
                            run_mix, HOST, port, n_clients, seconds, process.pid, mix, until_ready
                        )
                finally:
                    await _stop(process)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        figures["bmp_datagrams"] = sum(bmp.n_replies for bmp in bmps)
    return figures


def measure_reference(
    python: str,
    version: str,
    n_clients: int,
    seconds: float,
    mix: str | None = None,
    until_ready: bool = False,
) -> dict[str, Any]:
    """One run against a fresh original server; `server_load.py`'s figures plus its name."""
    with tempfile.TemporaryDirectory(prefix="spalloc-server-bench-") as tmp:
        figures = run_on_uvloop(
            load_reference(python, Path(tmp), n_clients, seconds, mix, until_ready)
        )
    figures["server"] = f"spalloc_server {version} (original)"
    return figures


def measure_allotment(
    n_clients: int, seconds: float, mix: str | None = None, until_ready: bool = False
) -> dict[str, Any]:
    """One run against a fresh allotment server, started as `server_load.py` starts it."""
    with own_server(None) as (host, port, pid):
        if mix is None:
            figures = run_on_uvloop(run_load(host, port, n_clients, seconds, pid))
        else:
            figures = run_mix(host, port, n_clients, seconds, pid, mix, until_ready)
    figures["server"] = "allotment, own subprocess, sqlite"
    return figures


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return round(statistics.median(values), 1) if values else None


def compare(
    python: str,
    version: str,
    n_runs: int,
    n_clients: int,
    seconds: float,
    mix: str | None = None,
    until_ready: bool = False,
) -> None:
    """Alternate runs of the original and of allotment; print each, then the medians."""
    original: list[dict[str, Any]] = []
    allotment: list[dict[str, Any]] = []
    for _ in range(n_runs):
        original.append(measure_reference(python, version, n_clients, seconds, mix, until_ready))
        print(json.dumps(original[-1]), flush=True)
        allotment.append(measure_allotment(n_clients, seconds, mix, until_ready))
        print(json.dumps(allotment[-1]), flush=True)
    original_rps = _median(original, "requests_per_s")
    allotment_rps = _median(allotment, "requests_per_s")
    original_cpu = _median(original, "server_cpu_us_per_request")
    allotment_cpu = _median(allotment, "server_cpu_us_per_request")
    cycle_cpu = (
        (
            _median(original, "server_cpu_us_per_cycle"),
            _median(allotment, "server_cpu_us_per_cycle"),
        )
        if mix is not None
        else (None, None)
    )
    summary = {
        "benchmark": "server_load_compare",
        "mix": mix,
        "until_ready": until_ready,
        "runs": n_runs,
        "clients": n_clients,
        "seconds": seconds,
        "original": f"spalloc_server {version}",
        "original_requests_per_s": original_rps,
        "allotment_requests_per_s": allotment_rps,
        # allotment / original: above 1 where allotment serves more requests per second
        "requests_per_s_ratio": (
            round(allotment_rps / original_rps, 2) if original_rps and allotment_rps else None
        ),
        "original_server_cpu_us_per_request": original_cpu,
        "allotment_server_cpu_us_per_request": allotment_cpu,
        # original / allotment: above 1 where allotment spends less CPU on a request
        "server_cpu_per_request_ratio": (
            round(original_cpu / allotment_cpu, 2) if original_cpu and allotment_cpu else None
        ),
        "original_server_cpu_us_per_cycle": cycle_cpu[0],
        "allotment_server_cpu_us_per_cycle": cycle_cpu[1],
        # original / allotment per job cycle (the mix): the same work when every job is READY
        "server_cpu_per_cycle_ratio": (
            round(cycle_cpu[0] / cycle_cpu[1], 2) if cycle_cpu[0] and cycle_cpu[1] else None
        ),
        "allocated_at_machine_info": (
            [
                statistics.median(r["allocated_at_machine_info"] for r in runs)
                for runs in (original, allotment)
            ]
            if mix is not None
            else None
        ),
        "errors": sum(run["errors"] for run in original + allotment),
    }
    print(json.dumps(summary), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the original (and allotment), print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-python",
        default=os.environ.get("SPALLOC_SERVER_PYTHON"),
        help="interpreter where spalloc_server is installed (default: $SPALLOC_SERVER_PYTHON)",
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--compare",
        type=int,
        metavar="N",
        help="alternate N runs of the original and N of allotment, then print the medians",
    )
    parser.add_argument(
        "--mix",
        nargs="?",
        const=DEFAULT_MIX,
        default=None,
        metavar="SIZES",
        help=f"the mixed-size load of mix_load.py (default mix {DEFAULT_MIX})",
    )
    parser.add_argument(
        "--until-ready",
        action="store_true",
        help="with --mix: each cycle waits for its job to be READY, as a job runner does",
    )
    args = parser.parse_args(argv)
    if args.until_ready and args.mix is None:
        parser.error("--until-ready goes with --mix")
    if args.mix is not None:
        parse_mix(args.mix)
    if not sys.platform.startswith("linux"):
        raise SystemExit(
            f"reference_server.py runs on Linux only (the fake BMPs listen on 127.N.F.0, "
            f"which only Linux routes to loopback); this is {sys.platform}"
        )
    if args.compare is not None and args.compare < 1:
        parser.error("--compare needs at least 1 run")
    version = reference_version(args.reference_python)
    if args.compare is None:
        figures = measure_reference(
            args.reference_python, version, args.clients, args.seconds, args.mix, args.until_ready
        )
        print(json.dumps(figures))
    else:
        compare(
            args.reference_python,
            version,
            args.compare,
            args.clients,
            args.seconds,
            args.mix,
            args.until_ready,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
