"""Batch-job benchmark: the seed's simple example from submit to finished, and jobs/minute.

Starts `allotment serve` (allocation server and batch service) on free ports in a temporary
directory, mints a token, and through the real `nmpi` client:

0. submits one trivial job and waits for it: `first_job_s`, which includes the runner's
   one-off compilation of the PyNN backend's kernels when the shared kernel cache of this
   code is cold (`jobqueue.kernel_cache`; set `ALLOTMENT_KERNEL_CACHE` to measure a cold
   one), and the dispatch workers' start;
1. on the allocation server's boards, waits until the runner's standby allocation is ready
   (`standby_ready_s` after the service's ready line: on a fresh service a job submitted
   before that powers boards of its own), then submits the seed's simple example
   (bench/seed_simple_example.py, a PyNN script) inline with `wait=False` and polls every
   0.1 s until it ends: `seed_submit_to_finished_s` (null, with `seed_error`, when the job
   does not finish, e.g. without the PyNN backend), and whether it ran on the standby;
2. the same for a plain matplotlib script (`plot_submit_to_finished_s`), the service's own
   overhead without a simulation;
3. submits N small scripts at once and times until all have ended: `jobs_per_minute`.

On the allocation server's boards (without `--batch-virtual`) the runner keeps a powered
standby allocation (`--standby-jobs`, default 1, as `allotment serve`); `--standby-jobs 0`
measures every PyNN job powering its own boards (the modelled power-on delay, 5 s by default).

Prints one JSON line. The client's own `wait=True` polls every 2 s, so through it a job
takes at least 2 s; the figures here are the service's.

    python bench/batch.py --jobs 20 --runners 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = REPO_ROOT / "bench" / "seed_simple_example.py"
_READY = re.compile(r"listening on (\S+):(\d+) .*batch service at (http://\S+?)\)")
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.savefig('plot.png')\n"


def _start(
    where: Path, runners: int, is_virtual: bool, standby_jobs: int
) -> tuple[subprocess.Popen[str], str, int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "allocator.cli",
            "serve",
            "--port",
            "0",
            "--batch-port",
            "0",
            "--db",
            f"sqlite:///{where / 'allotment.db'}",
            "--jobs-dir",
            str(where / "jobs"),
            "--runners",
            str(runners),
            *(["--batch-virtual"] if is_virtual else []),
            *("--standby-jobs", str(standby_jobs)),
        ],
        cwd=where,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        match = _READY.search(line)
        if match:
            return process, match.group(3), int(match.group(2))
    raise SystemExit("allotment serve did not start")


def _time_one(client: Any, code: str, timeout_s: float) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    uri = client.submit_job(source=code, platform="SpiNNaker", collab_id="bench")
    while True:
        job: dict[str, Any] = client.get_job(uri, with_log=True)
        if job["status"] in ("finished", "error") or time.perf_counter() - started > timeout_s:
            return time.perf_counter() - started, job
        time.sleep(0.1)


def _wait_for_standby(port: int, timeout_s: float) -> None:
    """Wait until the allocation server has a ready (powered) standby allocation."""
    import anyio

    from protocol.client import AllotmentClient

    async def is_ready() -> bool:
        client = await AllotmentClient.connect("127.0.0.1", port, timeout_s=10)
        try:
            jobs = await client.list_jobs()
        finally:
            await client.aclose()
        return any(j.owner.startswith("nmpi-standby ") and j.state == 3 for j in jobs)

    deadline = time.monotonic() + timeout_s
    while not anyio.run(is_ready):
        if time.monotonic() > deadline:
            raise SystemExit(f"no standby allocation was ready within {timeout_s:g} s")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="small scripts submitted at once")
    parser.add_argument("--runners", type=int, default=4, help="jobs run at once")
    parser.add_argument(
        "--batch-virtual",
        action="store_true",
        help="PyNN scripts run virtually in the job (allotment serve --batch-virtual)",
    )
    parser.add_argument(
        "--standby-jobs",
        type=int,
        default=1,
        help="powered allocations the runner keeps ready (0: every job powers its own boards)",
    )
    args = parser.parse_args()

    import nmpi
    import nmpi.nmpi_user

    from jobqueue.store import JobStore

    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        nmpi.nmpi_user.TOKENFILE = str(where / ".hbptoken")
        process, url, port = _start(where, args.runners, args.batch_virtual, args.standby_jobs)
        ready_at = time.perf_counter()
        standby_ready_s = None
        try:
            store = JobStore.open(f"sqlite:///{where / 'allotment.db'}")
            token = store.create_token("bench", ["bench"])
            store.close()
            client = nmpi.Client(
                token=token, job_service=url + "/", user_info_endpoint=url + "/userinfo"
            )
            # the first job waits for the runner's one-off compilation of the kernels
            warmup_s, _ = _time_one(client, "print('first')", 600)
            if args.standby_jobs and not args.batch_virtual:
                _wait_for_standby(port, 120)
                standby_ready_s = time.perf_counter() - ready_at
            seed_s, seed_job = _time_one(client, SEED.read_text(), 300)
            files = [f["path"] for f in (seed_job["output_data"] or {}).get("files", [])]
            plot_s, _ = _time_one(client, PLOT, 120)
            started = time.perf_counter()
            uris = [
                client.submit_job(source=f"print({i})", platform="SpiNNaker", collab_id="bench")
                for i in range(args.jobs)
            ]
            pending = set(uris)
            n_finished = 0
            while pending:
                for uri in list(pending):
                    status = client.job_status(uri)
                    if status in ("finished", "error"):
                        pending.discard(uri)
                        n_finished += status == "finished"
                time.sleep(0.1)
            elapsed_s = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(30)
    is_seed_ok = seed_job["status"] == "finished"
    error = None
    if not is_seed_ok:
        lines = (seed_job.get("log") or "").splitlines()
        found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        error = found[-1] if found else "\n".join(lines[-3:])
    print(
        json.dumps(
            {
                "seed_submit_to_finished_s": round(seed_s, 3) if is_seed_ok else None,
                "seed_status": seed_job["status"],
                "seed_outputs": [Path(f).name for f in files],
                "seed_error": error,
                "pynn_mode": "virtual" if args.batch_virtual else "server",
                "first_job_s": round(warmup_s, 3),
                "standby_ready_s": None if standby_ready_s is None else round(standby_ready_s, 3),
                "seed_standby_used": (seed_job.get("provenance") or {}).get("standby_used"),
                "plot_submit_to_finished_s": round(plot_s, 3),
                "jobs": args.jobs,
                "jobs_finished": n_finished,
                "jobs_seconds": round(elapsed_s, 3),
                "jobs_per_minute": round(60 * args.jobs / elapsed_s, 1),
                "runners": args.runners,
                "standby_jobs": args.standby_jobs,
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
