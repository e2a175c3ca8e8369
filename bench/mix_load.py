"""A load of mixed job sizes on the real spalloc `ProtocolClient`, one process per client.

`server_load.py --mix` and `reference_server.py --compare N --mix` use it. Each of N client
processes (32 by default) connects with the `spalloc` package's own `ProtocolClient`, as a
job runner does, and loops for a fixed time::

    create_job(<size drawn from the mix>) -> get_job_state -> job_keepalive x2
      -> get_job_machine_info -> destroy_job            (plus list_jobs every 10 cycles)

The default mix is 40% one board, 20% 3 boards, 15% a 2 x 1 rectangle of triads, 15%
12 boards and 10% 3 x 3 triads, written ``1:40,3:20,2x1:15,12:15,3x3:10`` (a size is a
number of boards or W x H triads, then its weight). The processes start together on a
barrier; the figures are those of `server_load.py` (requests/s, per-command latency, the
server's CPU time per request and per job cycle over the same window), and the share of
jobs get_job_machine_info found allocated.

By the time of the cycle's get_job_machine_info the original spalloc_server has named
boards for almost none of the jobs (under 1% of the default mix's; 39% of one-board jobs
even with a single client), so its cycles do far less work than allotment's, which
allocates and powers every job before it answers create_job. `--until-ready` (`until_ready`)
makes each cycle wait as a job runner does: `notify_job`, then `get_job_state` after each
notification until the job is READY, and only then the keepalives, the machine info and
the destroy; both servers then allocate and power every job, and the fair figure is the
server's CPU per job cycle.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import time
from collections import defaultdict
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

DEFAULT_MIX = "1:40,3:20,2x1:15,12:15,3x3:10"
_READY, _DESTROYED = 3, 4
"""spalloc's job states READY and DESTROYED."""
_READY_POLL_S = 1.0
"""Longest wait for a notification before asking for the state again."""
OWNER = "bench-mix@example.org"
CONNECT_TIMEOUT_S = 30.0

Size = tuple[int, ...]


def parse_mix(text: str) -> list[tuple[Size, float]]:
    """``"1:40,3:20,2x1:15"`` -> [((), 40.0), ((3,), 20.0), ((2, 1), 15.0)].

    One board is sent as ``create_job()`` (no positional arguments), as clients do.

    Raises:
        ValueError: a part is not SIZE:WEIGHT with a positive weight.
    """
    mix = []
    for part in text.split(","):
        size_text, _, weight_text = part.strip().partition(":")
        weight = float(weight_text)
        if weight <= 0:
            raise ValueError(f"mix weight of {size_text!r} must be positive")
        numbers = tuple(int(n) for n in size_text.lower().split("x"))
        if len(numbers) not in (1, 2) or min(numbers) < 1:
            raise ValueError(f"mix size {size_text!r} is not N or WxH")
        mix.append(((() if numbers == (1,) else numbers), weight))
    return mix


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (Linux), or None where unknown."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client(
    host: str,
    port: int,
    index: int,
    seconds: float,
    mix: list[tuple[Size, float]],
    barrier: Barrier,
    results: Any,
    until_ready: bool = False,
) -> None:
    """One client process: cycle jobs until the time is up, then report what it saw."""
    from spalloc_client import ProtocolClient
    from spalloc_client.protocol_client import (
        ProtocolError,
        ProtocolTimeoutError,
        SpallocServerException,
    )

    rng = random.Random(index)
    sizes = [size for size, _ in mix]
    weights = [weight for _, weight in mix]
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    cycles = with_boards = 0
    client = ProtocolClient(host, port)
    client.connect(CONNECT_TIMEOUT_S)
    barrier.wait()
    deadline = time.monotonic() + seconds

    def timed(command: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            value = call(*args, **kwargs)
        except (SpallocServerException, ProtocolError) as error:
            errors[f"{command}: {str(error)[:80]}"] += 1
            return None
        latencies[command].append(time.perf_counter() - started)
        return value

    try:
        while time.monotonic() < deadline:
            size = rng.choices(sizes, weights)[0]
            # `call` rather than `create_job`, which sends every option, None included:
            # the original server compares a None min_ratio and fails.
            job_id = timed(
                "create_job", client.call, "create_job", None, *size, owner=OWNER, keepalive=60.0
            )
            if job_id is None:
                continue
            if until_ready:
                # As spalloc's Job waits: notifications on, then the state until READY.
                timed("notify_job", client.notify_job, job_id)
                while time.monotonic() < deadline:
                    state = timed("get_job_state", client.get_job_state, job_id)
                    if not isinstance(state, dict) or state.get("state") in (_READY, _DESTROYED):
                        break
                    with contextlib.suppress(ProtocolTimeoutError):  # none: ask again
                        client.wait_for_notification(_READY_POLL_S)
            else:
                timed("get_job_state", client.get_job_state, job_id)
            timed("job_keepalive", client.job_keepalive, job_id)
            timed("job_keepalive", client.job_keepalive, job_id)
            info = timed("get_job_machine_info", client.get_job_machine_info, job_id)
            if isinstance(info, dict) and info.get("width") is not None:
                with_boards += 1
            timed("destroy_job", client.destroy_job, job_id, "bench")
            cycles += 1
            if cycles % 10 == 0:
                timed("list_jobs", client.list_jobs)
    finally:
        client.close()
    results.put(
        {
            "latencies": dict(latencies),
            "errors": dict(errors),
            "cycles": cycles,
            "with_boards": with_boards,
        }
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def latency_summary(latencies: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per command: how many replies, and their p50 and p99 latency in ms (sorts in place)."""
    per_command = {}
    for command, values in sorted(latencies.items()):
        values.sort()
        per_command[command] = {
            "n": len(values),
            "p50_ms": round(_percentile(values, 0.50) * 1e3, 3),
            "p99_ms": round(_percentile(values, 0.99) * 1e3, 3),
        }
    return per_command


def run_mix(
    host: str,
    port: int,
    n_clients: int,
    seconds: float,
    server_pid: int | None = None,
    mix_text: str = DEFAULT_MIX,
    until_ready: bool = False,
) -> dict[str, Any]:
    """Run the client processes against a server (blocking) and return the figures.

    With `until_ready` each cycle waits for its job to be READY (notifications, then
    `get_job_state`), as a job runner does, before the rest of the cycle: both servers then
    allocate and power every job.
    """
    mix = parse_mix(mix_text)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(n_clients + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=_client,
            args=(host, port, i, seconds, mix, barrier, results, until_ready),
            daemon=True,
        )
        for i in range(n_clients)
    ]
    for process in processes:
        process.start()
    barrier.wait(CONNECT_TIMEOUT_S)
    server_cpu_before = None if server_pid is None else _cpu_seconds(server_pid)
    started = time.monotonic()
    reports = [results.get(timeout=seconds + 60) for _ in processes]
    elapsed_s = time.monotonic() - started
    server_cpu_after = None if server_pid is None else _cpu_seconds(server_pid)
    for process in processes:
        process.join(30)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for report in reports:
        for command, values in report["latencies"].items():
            latencies[command].extend(values)
        for what, count in report["errors"].items():
            errors[what] += count
    n_requests = sum(len(v) for v in latencies.values())
    n_cycles = sum(report["cycles"] for report in reports)
    n_with_boards = sum(report["with_boards"] for report in reports)
    per_command = latency_summary(latencies)
    return {
        "benchmark": "server_load_mix",
        "mix": mix_text,
        "until_ready": until_ready,
        "client": "spalloc ProtocolClient, one process each",
        "clients": n_clients,
        "seconds": round(elapsed_s, 3),
        "requests": n_requests,
        "requests_per_s": round(n_requests / elapsed_s, 1),
        "job_cycles": n_cycles,
        "job_cycles_per_s": round(n_cycles / elapsed_s, 1),
        "server_cpu_us_per_cycle": (
            None
            if server_cpu_before is None or server_cpu_after is None or not n_cycles
            else round((server_cpu_after - server_cpu_before) / n_cycles * 1e6, 1)
        ),
        # The share of jobs whose boards get_job_machine_info named (allocated by then): a
        # server that leaves jobs queued answers the cycle's requests with less work.
        "allocated_at_machine_info": round(n_with_boards / n_cycles, 3) if n_cycles else None,
        "latency": per_command,
        "server_cpu_us_per_request": (
            None
            if server_cpu_before is None or server_cpu_after is None or not n_requests
            else round((server_cpu_after - server_cpu_before) / n_requests * 1e6, 1)
        ),
        "client_cpu_us_per_request": None,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }
