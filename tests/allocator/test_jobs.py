"""Tests of job records, transitions, reason strings and keepalive deadlines."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocator import jobs
from allocator.errors import AllocatorError, RequestError
from allocator.jobs import JobRecord, JobState, JobTransitionError
from machine_models.geometry import BoardXYZ

T0 = 1_700_000_000.0


def queued(job_id: int = 7) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        owner="alice",
        created_at=T0,
        keepalive_s=60.0,
        args=(2, 1),
        kwargs={"tags": ["default"], "min_ratio": 0.0},
    )


def allocated(job_id: int = 7) -> JobRecord:
    return jobs.allocate(
        queued(job_id), "spinn-1200", [BoardXYZ(1, 0, 2), BoardXYZ(0, 0, 0)], 28, 16
    )


def test_wire_numbers() -> None:
    assert [int(s) for s in JobState] == [0, 1, 2, 3, 4]
    assert [s.name for s in JobState] == ["UNKNOWN", "QUEUED", "POWER", "READY", "DESTROYED"]


def test_reason_strings_are_the_wire_strings() -> None:
    assert jobs.REASON_NO_SUITABLE_MACHINES == "Cancelled: No suitable machines available."
    assert jobs.REASON_JOB_TIMED_OUT == "Job timed out."
    assert jobs.REASON_QUEUED_JOB_TIMED_OUT == "Cancelled: Job timed out."
    assert jobs.REASON_MACHINE_REMOVED == "Machine removed."
    assert (
        jobs.bmp_failure_reason("10.2.0.0")
        == "Machine configuration failed. Error: Requests failed on BMP 10.2.0.0"
    )


def test_new_record_is_queued_without_allocation() -> None:
    record = queued()
    assert record.state is JobState.QUEUED
    assert record.power is None
    assert record.boards == ()
    assert (record.width_chips, record.height_chips, record.machine_name) == (None, None, None)
    assert record.is_live
    assert not record.is_allocated


def test_record_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        queued().state = JobState.READY  # type: ignore[misc]


def test_record_refuses_unknown_state_and_unsorted_boards() -> None:
    with pytest.raises(RequestError, match="job 3 cannot be recorded in state unknown"):
        dataclasses.replace(queued(3), state=JobState.UNKNOWN)
    with pytest.raises(RequestError, match="job 3 boards are not sorted"):
        dataclasses.replace(queued(3), boards=(BoardXYZ(1, 0, 0), BoardXYZ(0, 0, 0)))


def test_allocate_moves_queued_to_power_with_sorted_boards() -> None:
    record = allocated()
    assert record.state is JobState.POWER
    assert record.power is True
    assert record.machine_name == "spinn-1200"
    assert record.boards == (BoardXYZ(0, 0, 0), BoardXYZ(1, 0, 2))
    assert all(isinstance(b, BoardXYZ) for b in record.boards)
    assert (record.width_chips, record.height_chips) == (28, 16)
    assert record.is_allocated


def test_allocate_refuses_no_boards_and_allocated_jobs() -> None:
    with pytest.raises(RequestError, match="job 7 cannot be allocated zero boards"):
        jobs.allocate(queued(), "m", [], 8, 8)
    with pytest.raises(JobTransitionError, match="job 7 cannot be allocated while power"):
        jobs.allocate(allocated(), "m", [BoardXYZ(0, 0, 0)], 8, 8)


def test_power_done_moves_power_to_ready_only() -> None:
    ready = jobs.power_done(allocated())
    assert ready.state is JobState.READY
    assert ready.power is True
    with pytest.raises(JobTransitionError, match="job 7 cannot finish powering while ready"):
        jobs.power_done(ready)
    with pytest.raises(JobTransitionError, match="while queued"):
        jobs.power_done(queued())


@pytest.mark.parametrize("is_on", [True, False])
def test_set_power_from_ready_and_power(is_on: bool) -> None:
    ready = jobs.power_done(allocated())
    for record in (ready, allocated()):
        changed = jobs.set_power(record, is_on)
        assert changed.state is JobState.POWER
        assert changed.power is is_on
        assert changed.boards == record.boards


def test_set_power_refuses_queued_and_destroyed() -> None:
    with pytest.raises(JobTransitionError, match="job 7 cannot power off while queued") as info:
        jobs.set_power(queued(), False)
    assert info.value.state is JobState.QUEUED
    assert isinstance(info.value, AllocatorError)
    gone = jobs.destroy(allocated(), T0 + 1, None)
    with pytest.raises(JobTransitionError, match="cannot power on while destroyed"):
        jobs.set_power(gone, True)


@pytest.mark.parametrize(
    ("reason", "expected"), [(None, "Cancelled: "), ("", "Cancelled: "), ("bye", "Cancelled: bye")]
)
def test_destroy_queued_job_is_cancelled(reason: str | None, expected: str) -> None:
    gone = jobs.destroy(queued(), T0 + 5, reason)
    assert gone.state is JobState.DESTROYED
    assert gone.reason == expected
    assert gone.destroyed_at == T0 + 5
    assert not gone.is_live


@pytest.mark.parametrize("reason", [None, "", "finished"])
def test_destroy_allocated_job_keeps_reason_and_boards(reason: str | None) -> None:
    for record in (allocated(), jobs.power_done(allocated())):
        gone = jobs.destroy(record, T0 + 5, reason)
        assert gone.reason == reason
        assert gone.power is None
        assert gone.boards == record.boards
        assert not gone.is_allocated


def test_destroy_twice_is_refused() -> None:
    gone = jobs.destroy(queued(), T0, None)
    with pytest.raises(JobTransitionError, match="job 7 cannot be destroyed while destroyed"):
        jobs.destroy(gone, T0, None)
    with pytest.raises(JobTransitionError, match="cannot time out"):
        jobs.expire(gone, T0)
    with pytest.raises(JobTransitionError, match="cannot be cancelled"):
        jobs.cancel(gone, T0, jobs.REASON_MACHINE_REMOVED)


def test_expire_reasons() -> None:
    assert jobs.expire(queued(), T0).reason == "Cancelled: Job timed out."
    assert jobs.expire(allocated(), T0).reason == "Job timed out."
    assert jobs.expire(jobs.power_done(allocated()), T0).reason == "Job timed out."


def test_cancel_records_reason_verbatim() -> None:
    gone = jobs.cancel(queued(), T0, jobs.REASON_NO_SUITABLE_MACHINES)
    assert gone.reason == "Cancelled: No suitable machines available."
    gone = jobs.cancel(allocated(), T0, jobs.bmp_failure_reason("1.2.3.4"))
    assert gone.reason == "Machine configuration failed. Error: Requests failed on BMP 1.2.3.4"


def test_touch_returns_same_record_when_host_unchanged() -> None:
    record = queued()
    touched = jobs.touch(record, "10.0.0.9")
    assert touched.keepalivehost == "10.0.0.9"
    assert jobs.touch(touched, "10.0.0.9") is touched


def test_deadline_and_expiry() -> None:
    assert jobs.deadline(T0, 60.0) == T0 + 60.0
    assert jobs.deadline(T0, None) is None
    assert not jobs.is_expired(T0, 60.0, T0 + 59.9)
    assert jobs.is_expired(T0, 60.0, T0 + 60.0)
    assert not jobs.is_expired(T0, None, T0 + 1e9)


@given(
    last=st.floats(0, 2e9, allow_nan=False),
    keepalive=st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
    elapsed=st.floats(0, 2e6, allow_nan=False),
)
def test_expiry_agrees_with_deadline(last: float, keepalive: float | None, elapsed: float) -> None:
    when = jobs.deadline(last, keepalive)
    expired = jobs.is_expired(last, keepalive, last + elapsed)
    assert expired == (when is not None and last + elapsed >= when)


def test_transitions_change_their_fields_and_carry_over_the_rest() -> None:
    # Fields away from their defaults and from each other, so that a field dropped or
    # swapped by a transition shows.
    start = jobs.touch(queued(), "10.0.0.9")
    allocated = jobs.allocate(start, "m", [BoardXYZ(0, 0, 1)], 16, 8)
    ready = jobs.power_done(allocated)
    off = jobs.set_power(ready, False)
    replace = dataclasses.replace
    assert allocated == replace(
        start,
        state=JobState.POWER,
        power=True,
        machine_name="m",
        boards=(BoardXYZ(0, 0, 1),),
        width_chips=16,
        height_chips=8,
    )
    assert ready == replace(allocated, state=JobState.READY)
    assert off == replace(ready, state=JobState.POWER, power=False)
    assert jobs.power_done(off) == replace(off, state=JobState.READY)
    assert jobs.destroy(ready, T0 + 5, "done") == replace(
        ready, state=JobState.DESTROYED, power=None, reason="done", destroyed_at=T0 + 5
    )
    assert jobs.expire(start, T0 + 5) == replace(
        start,
        state=JobState.DESTROYED,
        reason=jobs.REASON_QUEUED_JOB_TIMED_OUT,
        destroyed_at=T0 + 5,
    )
