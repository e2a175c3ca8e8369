"""MQTT payload models and topic names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.events import (
    EVENT_SCHEMA_VERSION,
    BoardEvent,
    BoardState,
    JobEvent,
    MachineChange,
    MachineEvent,
    MachineSummary,
    board_topic,
    job_topic,
    machine_topic,
    summary_topic,
    topic_segment,
)


def test_topics() -> None:
    assert job_topic("allotment", "spin5", 7) == "allotment/spin5/jobs/7"
    assert job_topic("allotment", None, 8) == "allotment/_queued/jobs/8"
    assert board_topic("allotment", "spin5", 3, 4, 1) == "allotment/spin5/boards/3/4/1"
    assert summary_topic("a", "spin5") == "a/spin5/summary"
    assert machine_topic("a", "spin5") == "a/spin5/machine"


@given(st.text())
def test_topic_segment_is_one_level_without_wildcards(name: str) -> None:
    segment = topic_segment(name)
    assert segment
    assert not {"/", "+", "#"} & set(segment)


def test_payloads_round_trip_and_carry_version() -> None:
    events = [
        JobEvent(timestamp_s=1.0, job_id=1, state=1, state_name="queued", owner="me"),
        BoardEvent(timestamp_s=1.0, machine="m", x=0, y=1, z=2, state=BoardState.DEAD),
        MachineEvent(timestamp_s=1.0, machine="m", change=MachineChange.DRAINED, reason="fix"),
        MachineSummary(
            timestamp_s=1.0, machine="m", n_boards=3, n_boards_by_state={BoardState.FREE: 3},
            n_jobs=0, queue_length=0,
        ),
    ]  # fmt: skip
    for event in events:
        again = type(event).model_validate_json(event.model_dump_json())
        assert again == event
        assert again.version == EVENT_SCHEMA_VERSION
    assert {e.model_dump()["kind"] for e in events} == {"job", "board", "machine", "summary"}


def test_payloads_are_strict() -> None:
    with pytest.raises(ValidationError, match="extra"):
        JobEvent.model_validate(
            {"timestamp_s": 1, "job_id": 1, "state": 1, "state_name": "q", "owner": "o", "x": 1}
        )
    with pytest.raises(ValidationError, match="z"):
        BoardEvent(timestamp_s=1.0, machine="m", x=0, y=0, z=3, state=BoardState.FREE)
    event = JobEvent(timestamp_s=1.0, job_id=1, state=1, state_name="queued", owner="me")
    with pytest.raises(ValidationError, match="frozen"):
        event.job_id = 2  # type: ignore[misc]
