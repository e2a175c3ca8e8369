"""Load benchmark of the allocation server: many concurrent clients cycling jobs.

Each of N clients (one TCP connection each: a bare asyncio protocol on uvloop where installed
and the stdlib json, so that the clients cost little CPU next to the server) loops for a fixed
time:

    create_job -> get_job_state -> job_keepalive x2 -> get_job_machine_info -> destroy_job
    (plus list_jobs every 10 cycles)

and the run prints ONE JSON line: requests/s, job cycles/s, p50/p99 latency per command, the
CPU time per request of the server (when this script started it) and of the clients, the
number of clients, the seconds, and the errors. With `--host/--port` it loads a running server;
without them it starts its own server subprocess on a temporary SQLite database with zero
power delays, and stops it at the end. The clients always run in this process, apart from the
server.

    python bench/server_load.py --clients 32 --seconds 20

`--mix` runs the mixed-size load of `mix_load.py` instead (one process per client, on the
real spalloc `ProtocolClient`; the default mix, or ``--mix 1:40,3:20,2x1:15,12:15,3x3:10``).

    python bench/server_load.py --mix --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from mix_load import DEFAULT_MIX, latency_summary, parse_mix, run_mix

REPO_ROOT = Path(__file__).resolve().parents[1]
BOARD_LOCATIONS_CSV = REPO_ROOT / "allocator" / "data" / "spinn1m-ethernet-chips.csv"
READY_TIMEOUT_S = 60.0
LISTENING = re.compile(r"listening on \[?([0-9A-Za-z.:\-]+?)\]?:(\d+)\b")

SERVER_TOML = """\
[server]
seconds_before_free = 0.0
keepalive_check_s = 0.1

[power]
power_on_delay_s = 0.0
power_off_delay_s = 0.0

[[machines]]
name = "spinn-1200"
tags = ["default"]
width = 20
height = 20
board_locations = "spinn1m-ethernet-chips.csv"
"""

LOAD_TOML = SERVER_TOML + '\n[dispatch]\nstart_workers = "on_upload"\n'
"""The allocation load's server: no image is loaded, so no dispatch worker starts (a worker
warming its kernels at start would take CPU from the first seconds of the load)."""


class LoadClient(asyncio.Protocol):
    """One connection that issues requests one at a time and times them.

    A bare `asyncio.Protocol` with one future per call rather than streams: the clients
    share the machine with the server, so every microsecond they spend is one the server
    does not get.
    """

    def __init__(self) -> None:
        self.latencies_s: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._waiter: asyncio.Future[bytes] | None = None
        self._is_lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            # A reply (not a notification) answers the one call in flight.
            if self._waiter is not None and not self._waiter.done() and _is_reply(line):
                self._waiter.set_result(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("server closed the connection"))

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        if self._transport is None or self._is_lost:
            raise ConnectionError("not connected")
        line = json.dumps({"command": command, "args": args, "kwargs": kwargs}) + "\n"
        self._waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self._transport.write(line.encode())
        reply = json.loads(await self._waiter)
        self.latencies_s[command].append(time.perf_counter() - started)
        if "exception" in reply:
            self.errors[f"{command}: {reply['exception'][:80]}"] += 1
            return None
        return reply["return"]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _is_reply(line: bytes) -> bool:
    return line.startswith((b'{"return"', b'{"exception"'))


async def _client_loop(
    host: str, port: int, index: int, deadline: float, cycles: list[int]
) -> LoadClient:
    _, client = await asyncio.get_running_loop().create_connection(LoadClient, host, port)
    owner = f"load-{index}@example.org"
    n_cycles = 0
    try:
        while time.monotonic() < deadline:
            job_id = await client.call("create_job", owner=owner, keepalive=60.0)
            if job_id is None:
                continue
            await client.call("get_job_state", job_id)
            await client.call("job_keepalive", job_id)
            await client.call("job_keepalive", job_id)
            await client.call("get_job_machine_info", job_id)
            await client.call("destroy_job", job_id, "load test")
            n_cycles += 1
            if n_cycles % 10 == 0:
                await client.call("list_jobs")
    except (ConnectionError, OSError) as exc:
        client.errors[f"connection: {exc}"] += 1
    finally:
        client.close()
        cycles[index] = n_cycles
    return client


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (Linux), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    host: str, port: int, n_clients: int, seconds: float, server_pid: int | None = None
) -> dict[str, Any]:
    """Run the clients against a server and return the figures.

    With `server_pid` the figures include the server's CPU time per request, which varies
    less than requests/s with whatever else the machine is doing.
    """
    cycles = [0] * n_clients
    server_cpu_before = None if server_pid is None else _cpu_seconds(server_pid)
    client_cpu_before = time.process_time()
    started = time.monotonic()
    deadline = started + seconds
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(_client_loop(host, port, i, deadline, cycles)) for i in range(n_clients)
        ]
    elapsed_s = time.monotonic() - started
    client_cpu_s = time.process_time() - client_cpu_before
    server_cpu_after = None if server_pid is None else _cpu_seconds(server_pid)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for task in tasks:
        client = task.result()
        for command, values in client.latencies_s.items():
            latencies[command].extend(values)
        for what, count in client.errors.items():
            errors[what] += count
    n_requests = sum(len(v) for v in latencies.values())
    per_command = latency_summary(latencies)
    return {
        "benchmark": "server_load",
        "clients": n_clients,
        "seconds": round(elapsed_s, 3),
        "requests": n_requests,
        "requests_per_s": round(n_requests / elapsed_s, 1),
        "job_cycles": sum(cycles),
        "job_cycles_per_s": round(sum(cycles) / elapsed_s, 1),
        "latency": per_command,
        "server_cpu_us_per_request": (
            None
            if server_cpu_before is None or server_cpu_after is None or not n_requests
            else round((server_cpu_after - server_cpu_before) / n_requests * 1e6, 1)
        ),
        "client_cpu_us_per_request": (
            round(client_cpu_s / n_requests * 1e6, 1) if n_requests else None
        ),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }


@contextlib.contextmanager
def own_server(
    db_url: str | None, config_text: str = LOAD_TOML, *, extra_args: Sequence[str] = ()
) -> Iterator[tuple[str, int, int]]:
    """Start a server subprocess on a temporary SQLite file (or `db_url`) and stop it after.

    `extra_args` go on its command line.
    Yields the host and port it listens on and its process id.
    """
    with tempfile.TemporaryDirectory(prefix="allotment-bench-") as tmp:
        directory = Path(tmp)
        shutil.copy(BOARD_LOCATIONS_CSV, directory / BOARD_LOCATIONS_CSV.name)
        (directory / "allotment.toml").write_text(config_text)
        url = db_url or f"sqlite:///{directory / 'allotment.db'}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        log_path = directory / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "allocator.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--config",
                    str(directory / "allotment.toml"),
                    "--db",
                    url,
                    # The allocation server alone: the batch service is no part of this
                    # load, and its fixed port would collide with another run's.
                    "--no-batch",
                    *extra_args,
                ],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            drain: subprocess.Popen[bytes] | None = None
            try:
                assert proc.stderr is not None
                address = None
                for raw in proc.stderr:
                    log.write(raw)
                    match = LISTENING.search(raw.decode("utf-8", "replace"))
                    if match:
                        address = match.group(1), int(match.group(2))
                        break
                if address is None:
                    log.flush()
                    raise SystemExit(f"server did not start:\n{log_path.read_text()}")
                # Keep draining stderr so that a chatty server never blocks on a full pipe.
                drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=log)
                yield (*address, proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if drain is not None:
                    drain.wait(30)


def run_on_uvloop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run the clients on uvloop where it is installed (as the server does): cheaper clients."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _load(
    host: str,
    port: int,
    n_clients: int,
    seconds: float,
    pid: int | None,
    mix: str | None,
    until_ready: bool = False,
) -> dict[str, Any]:
    """The single-board load of this script, or the mixed load of `mix_load.py`."""
    if mix is not None:
        return run_mix(host, port, n_clients, seconds, pid, mix, until_ready)
    return run_on_uvloop(run_load(host, port, n_clients, seconds, pid))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="a running server (default: start one)")
    parser.add_argument("--port", type=int, default=22244)
    parser.add_argument("--db", help="database URL for the server this script starts")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--mix",
        nargs="?",
        const=DEFAULT_MIX,
        default=None,
        metavar="SIZES",
        help=f"mixed job sizes on the spalloc client, one process each (default mix {DEFAULT_MIX})",
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
        parse_mix(args.mix)  # a bad mix fails before any server starts
    if args.host:
        figures = _load(
            args.host, args.port, args.clients, args.seconds, None, args.mix, args.until_ready
        )
        figures["server"] = "external"
    else:
        with own_server(args.db) as (host, port, pid):
            figures = _load(host, port, args.clients, args.seconds, pid, args.mix, args.until_ready)
        figures["server"] = "own subprocess, " + (
            "sqlite" if not args.db else args.db.split(":")[0]
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
