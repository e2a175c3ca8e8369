"""Benchmark: allocation and scheduling decisions on the default 1,200-board machine.

Queues 1,000 mixed jobs, measures the time per allocate call on the empty machine and the
time per job considered in a schedule pass after a job frees boards; prints one JSON line.
"""

from __future__ import annotations

import json
import random
import time

from allocator.config import default_config
from allocator.packing import MachineAllocator
from allocator.requests import JobRequest
from allocator.scheduler import QueuedJob, Scheduler


def _mixed_requests(n_jobs: int, rng: random.Random) -> list[JobRequest]:
    forms: list[list[object]] = [[], [1], [3], [4], [12], [24], [48], [2, 2], [3, 1], [100]]
    return [JobRequest.from_args(rng.choice(forms)) for _ in range(n_jobs)]


def main() -> None:
    """Run the benchmark and print its figures."""
    rng = random.Random(1)
    machine = default_config().machines[0]
    requests = _mixed_requests(1000, rng)

    allocator = MachineAllocator(machine)
    start = time.perf_counter()
    n_allocs = 0
    for job_id, request in enumerate(requests, start=1):
        allocator.allocate(request, job_id)
        n_allocs += 1
    allocate_s = (time.perf_counter() - start) / n_allocs

    allocator = MachineAllocator(machine)
    scheduler = Scheduler({machine.name: allocator}, starvation_s=600.0)
    queued = [QueuedJob(i, r, (machine.name,), float(i)) for i, r in enumerate(requests, 1)]
    placed = {p.job_id for p in scheduler.schedule(queued, now=10_000.0)}
    waiting = [j for j in queued if j.job_id not in placed]
    victim = min(placed)
    allocator.free(victim)
    start = time.perf_counter()
    second = scheduler.schedule(waiting, now=10_001.0)
    pass_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "bench": "allocation",
                "machine_boards": len(machine.live_boards),
                "jobs": len(requests),
                "allocate_us_per_call": round(allocate_s * 1e6, 2),
                "first_pass_placed": len(placed),
                "queued_after_first_pass": len(waiting),
                "schedule_pass_ms": round(pass_s * 1e3, 3),
                "schedule_us_per_job_considered": round(pass_s / max(len(waiting), 1) * 1e6, 2),
                "placed_in_second_pass": len(second),
                "reservations": len(scheduler.reservations),
            }
        )
    )


if __name__ == "__main__":
    main()
