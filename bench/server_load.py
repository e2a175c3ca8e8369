"""Load benchmark of the allocation server: many concurrent clients cycling jobs.

Each of N clients (one TCP connection each, raw asyncio streams and the stdlib json, so that
the clients cost little CPU next to the server) loops for a fixed time:

    create_job -> get_job_state -> job_keepalive x2 -> get_job_machine_info -> destroy_job
    (plus list_jobs every 10 cycles)

and the run prints ONE JSON line: requests/s, job cycles/s, p50/p99 latency per command, the
number of clients, the seconds, and the errors. With `--host/--port` it loads a running server;
without them it starts its own server subprocess on a temporary SQLite database with zero
power delays, and stops it at the end. The clients always run in this process, apart from the
server.

    python bench/server_load.py --clients 32 --seconds 20
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class LoadClient:
    """One connection that issues requests one at a time and times them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.latencies_s: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        line = json.dumps({"command": command, "args": args, "kwargs": kwargs}) + "\n"
        started = time.perf_counter()
        self._writer.write(line.encode())
        while True:
            raw = await self._reader.readline()
            if not raw:
                raise ConnectionError("server closed the connection")
            reply = json.loads(raw)
            if "return" in reply or "exception" in reply:
                break  # anything else is a notification
        self.latencies_s[command].append(time.perf_counter() - started)
        if "exception" in reply:
            self.errors[f"{command}: {reply['exception'][:80]}"] += 1
            return None
        return reply["return"]

    def close(self) -> None:
        self._writer.close()


async def _client_loop(
    host: str, port: int, index: int, deadline: float, cycles: list[int]
) -> LoadClient:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
    client = LoadClient(reader, writer)
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


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_load(host: str, port: int, n_clients: int, seconds: float) -> dict[str, Any]:
    """Run the clients against a server and return the figures."""
    cycles = [0] * n_clients
    started = time.monotonic()
    deadline = started + seconds
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(_client_loop(host, port, i, deadline, cycles)) for i in range(n_clients)
        ]
    elapsed_s = time.monotonic() - started
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for task in tasks:
        client = task.result()
        for command, values in client.latencies_s.items():
            latencies[command].extend(values)
        for what, count in client.errors.items():
            errors[what] += count
    n_requests = sum(len(v) for v in latencies.values())
    per_command = {}
    for command, values in sorted(latencies.items()):
        values.sort()
        per_command[command] = {
            "n": len(values),
            "p50_ms": round(_percentile(values, 0.50) * 1e3, 3),
            "p99_ms": round(_percentile(values, 0.99) * 1e3, 3),
        }
    return {
        "benchmark": "server_load",
        "clients": n_clients,
        "seconds": round(elapsed_s, 3),
        "requests": n_requests,
        "requests_per_s": round(n_requests / elapsed_s, 1),
        "job_cycles": sum(cycles),
        "job_cycles_per_s": round(sum(cycles) / elapsed_s, 1),
        "latency": per_command,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }


@contextlib.contextmanager
def own_server(db_url: str | None) -> Iterator[tuple[str, int]]:
    """Start a server subprocess on a temporary SQLite file (or `db_url`) and stop it after."""
    with tempfile.TemporaryDirectory(prefix="allotment-bench-") as tmp:
        directory = Path(tmp)
        shutil.copy(BOARD_LOCATIONS_CSV, directory / BOARD_LOCATIONS_CSV.name)
        (directory / "allotment.toml").write_text(SERVER_TOML)
        url = db_url or f"sqlite+aiosqlite:///{directory / 'allotment.db'}"
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
                yield address
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if drain is not None:
                    drain.wait(30)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="a running server (default: start one)")
    parser.add_argument("--port", type=int, default=22244)
    parser.add_argument("--db", help="database URL for the server this script starts")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.host:
        figures = asyncio.run(run_load(args.host, args.port, args.clients, args.seconds))
        figures["server"] = "external"
    else:
        with own_server(args.db) as (host, port):
            figures = asyncio.run(run_load(host, port, args.clients, args.seconds))
        figures["server"] = "own subprocess, " + (
            "sqlite" if not args.db else args.db.split(":")[0]
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
