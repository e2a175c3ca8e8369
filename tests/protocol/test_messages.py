"""Reply models serialise to exactly the reference server's keys; models are frozen and strict."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

import protocol
from protocol.codec import encode_reply
from protocol.messages import (
    AllotmentVersionReply,
    CreateJobArgs,
    JobListEntry,
    JobMachineInfoReply,
    JobStateReply,
    MachineListEntry,
    WhereIsReply,
    WireBoardCFB,
    WireBoardXYZ,
    WireChipXY,
    WireConnection,
    WireDeadLink,
)

_STATE = JobStateReply(
    state=3, power=True, keepalive_s=60.0, reason=None, start_time=1.5, keepalivehost="10.0.0.1"
)
_INFO = JobMachineInfoReply(
    width=28,
    height=16,
    connections=[
        WireConnection(WireChipXY(0, 0), "10.0.0.2"),
        WireConnection(WireChipXY(12, 0), "10.0.0.3"),
    ],
    machine_name="spinn-1200",
    boards=[WireBoardXYZ(0, 0, 0), WireBoardXYZ(1, 0, 0)],
)
_JOB = JobListEntry(
    job_id=4,
    owner="me",
    start_time=1.5,
    keepalive_s=None,
    state=1,
    power=None,
    args=[2, 1],
    kwargs=CreateJobArgs(owner="me").listed_kwargs(),
    allocated_machine_name=None,
    boards=None,
    keepalivehost="",
)
_MACHINE = MachineListEntry(
    name="spinn-1200",
    tags=["default"],
    width=20,
    height=20,
    dead_boards=[WireBoardXYZ(1, 2, 0)],
    dead_links=[WireDeadLink(3, 4, 1, 2)],
)
_WHERE = WhereIsReply(
    machine="spinn-1200",
    logical=WireBoardXYZ(1, 0, 1),
    physical=WireBoardCFB(1, 0, 16),
    chip=WireChipXY(20, 4),
    board_chip=WireChipXY(0, 0),
    job_id=None,
    job_chip=None,
)


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        (_STATE, ["state", "power", "keepalive", "reason", "start_time", "keepalivehost"]),
        (_INFO, ["width", "height", "connections", "machine_name", "boards"]),
        (
            _JOB,
            [
                "job_id",
                "owner",
                "start_time",
                "keepalive",
                "state",
                "power",
                "args",
                "kwargs",
                "allocated_machine_name",
                "boards",
                "keepalivehost",
            ],
        ),
        (_MACHINE, ["name", "tags", "width", "height", "dead_boards", "dead_links"]),
        (_WHERE, ["machine", "logical", "physical", "chip", "board_chip", "job_id", "job_chip"]),
        (
            AllotmentVersionReply(server="allotment", version="0.1.0", protocol=1),
            ["server", "version", "protocol"],
        ),
    ],
)
def test_reply_models_serialise_to_exactly_the_spec_keys(model: BaseModel, keys: list[str]) -> None:
    sent = json.loads(encode_reply(model))["return"]
    assert list(sent) == keys


def test_coordinates_go_on_the_wire_as_nested_arrays() -> None:
    info = json.loads(encode_reply(_INFO))["return"]
    assert info["connections"] == [[[0, 0], "10.0.0.2"], [[12, 0], "10.0.0.3"]]
    assert info["boards"] == [[0, 0, 0], [1, 0, 0]]
    where = json.loads(encode_reply(_WHERE))["return"]
    assert (where["logical"], where["physical"], where["chip"]) == ([1, 0, 1], [1, 0, 16], [20, 4])
    machine = json.loads(encode_reply(_MACHINE))["return"]
    assert machine["dead_links"] == [[3, 4, 1, 2]]


@pytest.mark.parametrize("model", [_STATE, _INFO, _JOB, _MACHINE, _WHERE])
def test_replies_round_trip_through_the_wire_shape(model: BaseModel) -> None:
    sent = json.loads(encode_reply(model))["return"]
    assert type(model).model_validate(sent) == model


def test_null_reply_of_an_unknown_job_keeps_every_key() -> None:
    unknown = JobMachineInfoReply(
        width=None, height=None, connections=None, machine_name=None, boards=None
    )
    assert json.loads(encode_reply(unknown))["return"] == dict.fromkeys(
        ["width", "height", "connections", "machine_name", "boards"]
    )


def test_models_are_frozen_and_forbid_extra_keys() -> None:
    with pytest.raises(ValidationError):
        _STATE.state = 4  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        JobStateReply.model_validate({**_STATE.model_dump(by_alias=True), "colour": "red"})


def test_public_api_is_exported() -> None:
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None
    assert sorted(protocol.__all__) == sorted(set(protocol.__all__))
