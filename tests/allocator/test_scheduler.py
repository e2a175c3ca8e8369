"""Tests of the queue rule: oldest first, no head-of-line blocking, reservations."""

from __future__ import annotations

from allocator.config import default_config
from allocator.packing import MachineAllocator
from allocator.requests import JobRequest
from allocator.scheduler import QueuedJob, Scheduler

MACHINE = default_config().machines[0]
NAME = MACHINE.name


def _job(job_id: int, args: tuple[int, ...], queued_at: float) -> QueuedJob:
    return QueuedJob(job_id, JobRequest.from_args(args), (NAME,), queued_at)


def test_oldest_first_and_no_head_of_line_blocking() -> None:
    allocator = MachineAllocator(MACHINE)
    scheduler = Scheduler({NAME: allocator}, starvation_s=600.0)
    filler = allocator.allocate(JobRequest.from_args((20, 19)), 100)
    assert filler is not None
    queue = [_job(2, (), 2.0), _job(1, (20, 20), 1.0), _job(3, (4,), 3.0)]
    placed = scheduler.schedule(queue, now=10.0)
    assert [p.job_id for p in placed] == [2, 3]
    assert all(p.machine_name == NAME for p in placed)


def test_starving_job_gets_reservation_and_blocks_younger() -> None:
    allocator = MachineAllocator(MACHINE)
    scheduler = Scheduler({NAME: allocator}, starvation_s=60.0)
    assert allocator.allocate(JobRequest.from_args((20, 19)), 100) is not None
    assert allocator.allocate(JobRequest.from_args((1, 1)), 101) is not None
    big = _job(1, (20, 1), 0.0)
    small = _job(2, (1, 1), 50.0)
    assert [p.job_id for p in scheduler.schedule([big, small], now=100.0)] == []
    assert scheduler.reservations[1][0] == NAME
    assert len(scheduler.reservations[1][1]) == 20
    allocator.free(101)
    placed = scheduler.schedule([big, small], now=101.0)
    assert [p.job_id for p in placed] == [1]
    assert 1 not in scheduler.reservations


def test_younger_job_fits_when_not_starving() -> None:
    allocator = MachineAllocator(MACHINE)
    scheduler = Scheduler({NAME: allocator}, starvation_s=600.0)
    assert allocator.allocate(JobRequest.from_args((20, 19)), 100) is not None
    assert allocator.allocate(JobRequest.from_args((1, 1)), 101) is not None
    placed = scheduler.schedule([_job(1, (20, 1), 0.0), _job(2, (1, 1), 50.0)], now=100.0)
    assert [p.job_id for p in placed] == [2]
    assert not scheduler.reservations


def test_unknown_machine_skipped_and_fallback_order() -> None:
    first = MachineAllocator(MACHINE)
    scheduler = Scheduler({NAME: first}, starvation_s=600.0)
    job = QueuedJob(1, JobRequest.from_args(()), ("absent", NAME), 0.0)
    (placement,) = scheduler.schedule([job], now=1.0)
    assert placement.machine_name == NAME


def test_empty_queue_places_nothing_and_drops_reservations() -> None:
    allocator = MachineAllocator(MACHINE)
    scheduler = Scheduler({NAME: allocator}, starvation_s=60.0)
    assert allocator.allocate(JobRequest.from_args((20, 20)), 100) is not None
    big = _job(1, (20, 1), 0.0)
    assert scheduler.schedule([big], now=100.0) == []
    assert 1 in scheduler.reservations
    # the job left the queue (destroyed, say) and its reservation went with it
    assert scheduler.schedule([], now=101.0) == []
    assert not scheduler.reservations
