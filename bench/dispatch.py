"""The dispatch path against running the same image in-process: brunel-exp through a server.

Builds the benchmark network (``brunel-exp`` of the benchmark specification) with the
toolchain onto a one-board job, uploads its image through a running server (one started
here on a scratch directory, or ``--host/--port``), runs it on the server's worker, fetches
the results, and runs the same image with `Executor` in this process. The two alternate
``--repeat`` times (server first, then in-process, each round) and the medians are reported.
A second client, in a process of its own, asks the server for ``get_job_state`` every 5 ms
during every server path and records its latency.

It prints one JSON line: ``image_mb``, ``upload_mb_per_s`` (image bytes over the time
``load_image`` took, validation included), ``queue_wait_s`` (start_run until the worker
started it, with its executor built or taken from the preload), ``run_s_server`` (the
worker's run, from started to done), ``run_s_inprocess``
(``Executor(image, topology)`` plus ``run``), ``fetch_s`` (results fetched and decoded),
``overhead_fraction`` ((whole server path - in-process run) / in-process run, the whole path
being load + queue + run + fetch), ``probe_p50_ms``, ``probe_p99_ms``, ``spikes_identical``,
``probe_idle_p50_ms`` and ``probe_idle_p99_ms`` (the same client while the server idles and
this process runs the in-process run: the same load on the machine, nothing for the server
to do), ``probe_upload_p99_ms`` and ``probe_upload_max_ms`` (the requests sent while an image
was being uploaded), and the load average at the start and end.

Usage: ``python bench/dispatch.py [--network brunel-exp|brunel-exp-small] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from brunel import NETWORKS, SIM_MS, brunel_network
from server_load import SERVER_TOML, own_server

from machine_models import Executor
from machine_models.executor import Results
from machine_models.results_file import decode_results
from protocol.client import AllotmentClient
from protocol.dispatch import RunProgress, RunState
from toolchain import MappedNetwork, allocation_from_machine_info, map_network

DISPATCH_TOML = SERVER_TOML + "\n[dispatch]\nworkers = 1\nresults_grace_s = 0.0\nworker_nice = 5\n"
PROBE_INTERVAL_S = 0.005
TIMEOUT_S = 600.0


async def _ready_job(client: AllotmentClient, owner: str) -> tuple[int, dict[str, Any]]:
    job_id = await client.create_job(owner=owner, keepalive_s=None)
    await client.notify_job(job_id)
    while (await client.get_job_state(job_id)).state != 3:
        await client.receive_notification(timeout_s=TIMEOUT_S)
    return job_id, (await client.get_job_machine_info(job_id)).model_dump(mode="json")


async def _server_path(
    client: AllotmentClient, job_id: int, data: bytes, n_steps: int, token: str | None
) -> tuple[dict[str, float], Results, str]:
    """Load, run, fetch once; the phases' times, the results and the job's token."""
    start = time.perf_counter()
    upload_from = time.time()
    loaded = await client.load_image(job_id, data, owner="bench", token=token)
    loaded_at = time.perf_counter()
    upload_to = time.time()
    await client.start_run(job_id, loaded.token, n_steps, fresh=True)
    started_at = done_at = 0.0
    while not done_at:
        notification = await client.receive_notification(timeout_s=TIMEOUT_S)
        if not isinstance(notification, RunProgress):
            continue
        status = notification.run_progress
        if status.state is RunState.RUNNING and status.steps_done == 0:
            # The last of these is the worker's own start, once it has its executor (the
            # first comes when the pool hands the run over, maybe during a preload).
            started_at = time.perf_counter()
        if status.state is not None and status.state.is_over:
            if status.state is not RunState.DONE:
                raise SystemExit(f"the run ended {status.state}: {status.reason}")
            done_at = time.perf_counter()
    raw = await client.fetch_results(job_id, loaded.token)
    results, _ = decode_results(raw)
    end = time.perf_counter()
    phases = {
        "load_s": loaded_at - start,
        "queue_wait_s": (started_at or done_at) - loaded_at,
        "run_s": done_at - (started_at or done_at),
        "fetch_s": end - done_at,
        "whole_s": end - start,
        "upload_from": upload_from,
        "upload_to": upload_to,
    }
    return phases, results, loaded.token


def _in_process(mapped: MappedNetwork, n_steps: int) -> tuple[float, Results]:
    start = time.perf_counter()
    results = Executor(mapped.image, mapped.topology).run(n_steps)
    return time.perf_counter() - start, results


def _same_spikes(a: Results, b: Results) -> bool:
    return a.spikes.keys() == b.spikes.keys() and all(
        np.array_equal(a.spikes[k], b.spikes[k]) and a.spikes[k].dtype == b.spikes[k].dtype
        for k in a.spikes
    )


def _start_probe(host: str, port: int, job_id: int) -> subprocess.Popen[str]:
    """Start the second client and wait until it has made its first request."""
    probe = subprocess.Popen(
        [sys.executable, __file__, "--probe", host, str(port), str(job_id)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    if probe.stdout.readline().strip() != "probing":
        raise SystemExit("the probe client did not start")
    return probe


def _stop_probe(probe: subprocess.Popen[str]) -> list[tuple[float, float]]:
    """The probe's (Unix time sent, latency in ms) of every request."""
    out, _ = probe.communicate("", timeout=TIMEOUT_S)
    return [(float(t), float(ms)) for t, ms in json.loads(out)]


async def _probe(host: str, port: int, job_id: int) -> list[tuple[float, float]]:
    """Ask for a job's state every few ms until standard input closes: (sent at, ms)."""
    latencies: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.read)
    async with await AllotmentClient.connect(host, port, timeout_s=30.0) as client:
        # The probe's own garbage collections are no latency of the server's.
        gc.freeze()
        gc.disable()
        while not stop.done():
            sent_at = time.time()
            start = time.perf_counter()
            await client.get_job_state(job_id)
            latencies.append((sent_at, (time.perf_counter() - start) * 1000.0))
            if len(latencies) == 1:
                print("probing", flush=True)
            await asyncio.sleep(PROBE_INTERVAL_S)
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _bench(host: str, port: int, network: str, repeat: int) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    n_steps = round(SIM_MS / 0.1)
    async with await AllotmentClient.connect(host, port, timeout_s=60.0) as client:
        job_id, info = await _ready_job(client, "bench")
        net, _neurons, _drive, _e, _i = brunel_network(NETWORKS[network], 1)
        mapped = map_network(net, allocation_from_machine_info(info))
        data = mapped.image.encode()
        # Warm both paths up (the worker's compiled kernels are loaded on its first run).
        _, _, token = await _server_path(client, job_id, data, 10, None)
        _in_process(mapped, 10)
        rounds: list[dict[str, float]] = []
        identical = True
        probes: list[tuple[float, float]] = []
        idle_probes: list[tuple[float, float]] = []
        for _ in range(repeat):
            probe = _start_probe(host, port, job_id)
            phases, remote, token = await _server_path(client, job_id, data, n_steps, token)
            probes += _stop_probe(probe)
            probe = _start_probe(host, port, job_id)
            phases["inprocess_s"], local = _in_process(mapped, n_steps)
            idle_probes += _stop_probe(probe)
            identical = identical and _same_spikes(remote, local)
            rounds.append(phases)
        await client.destroy_job(job_id)

    during_upload = [
        ms for t, ms in probes if any(r["upload_from"] <= t <= r["upload_to"] for r in rounds)
    ]

    def p(samples: list[tuple[float, float]], fraction: float) -> float:
        return round(_percentile([ms for _, ms in samples], fraction), 3)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    inprocess = median("inprocess_s")
    return {
        "network": network,
        "image_mb": round(len(data) / 1e6, 3),
        "upload_mb_per_s": round(len(data) / 1e6 / median("load_s"), 1),
        "queue_wait_s": round(median("queue_wait_s"), 4),
        "run_s_server": round(median("run_s"), 3),
        "run_s_inprocess": round(inprocess, 3),
        "fetch_s": round(median("fetch_s"), 4),
        "whole_path_s": round(median("whole_s"), 3),
        "overhead_fraction": round((median("whole_s") - inprocess) / inprocess, 4),
        "probe_p50_ms": p(probes, 0.50),
        "probe_p99_ms": p(probes, 0.99),
        "probe_n": len(probes),
        "probe_upload_p99_ms": round(_percentile(during_upload, 0.99), 3)
        if during_upload
        else None,
        "probe_upload_max_ms": round(max(during_upload), 3) if during_upload else None,
        "probe_upload_n": len(during_upload),
        "probe_idle_p50_ms": p(idle_probes, 0.50),
        "probe_idle_p99_ms": p(idle_probes, 0.99),
        "spikes_identical": identical,
        "repeat": repeat,
        "rounds": [
            {k: round(v, 4) for k, v in r.items() if not k.startswith("upload_")} for r in rounds
        ],
        "loadavg_start": round(load_start, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    """Run the benchmark (or, with --probe, the second client) and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="brunel-exp")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--host", help="a running server (default: start one here)")
    parser.add_argument("--port", type=int, default=22244)
    parser.add_argument("--probe", nargs=3, metavar=("HOST", "PORT", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        host, port, job = args.probe
        print(json.dumps(asyncio.run(_probe(host, int(port), int(job)))))
        return
    if args.host:
        result = asyncio.run(_bench(args.host, args.port, args.network, args.repeat))
    else:
        # Without the batch service: its start-up work is no part of the path measured.
        with own_server(None, DISPATCH_TOML) as (host, port, _pid):
            result = asyncio.run(_bench(host, port, args.network, args.repeat))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
