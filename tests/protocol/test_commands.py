"""Binding raw args/kwargs Python-style: the table, each create_job form, every error shape."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from protocol.commands import (
    MAX_INT,
    MAX_LIST_ITEMS,
    REQUIRED,
    V1_COMMAND_NAMES,
    V1_VERSION,
    CommandSpec,
    Param,
    allotment_version_reply,
    bind,
    check_int,
    command_table,
    construct_plain,
    get_spec,
    is_plain_model,
    register,
)
from protocol.errors import CommandError, DuplicateCommandError, UnknownCommandError
from protocol.messages import (
    CreateJobArgs,
    DestroyJobArgs,
    GetBoardPositionArgs,
    GetJobStateArgs,
    ListJobsArgs,
    NoNotifyJobArgs,
    NotifyJobArgs,
    NotifyMachineArgs,
    WhereIsBoardArgs,
    WhereIsChipArgs,
    WhereIsJobChipArgs,
    WhereIsPhysicalArgs,
)

# Every create_job option exactly as the 1!7.4.1 client sends it when the user set nothing.
_ALL_NULL_OPTIONS = {
    "keepalive": 60.0,
    "machine": None,
    "tags": None,
    "min_ratio": None,
    "max_dead_boards": None,
    "max_dead_links": None,
    "require_torus": None,
}


def test_the_table_has_exactly_the_v1_commands_plus_ours() -> None:
    # The reference's table has 15 rows; notify/no_notify share two of them: 17 names.
    assert {
        "version",
        "create_job",
        "job_keepalive",
        "get_job_state",
        "get_job_machine_info",
        "power_on_job_boards",
        "power_off_job_boards",
        "destroy_job",
        "notify_job",
        "no_notify_job",
        "notify_machine",
        "no_notify_machine",
        "list_jobs",
        "list_machines",
        "get_board_position",
        "get_board_at_position",
        "where_is",
    } == V1_COMMAND_NAMES
    assert set(command_table()) >= V1_COMMAND_NAMES | {"allotment_version"}


def test_v1_version_satisfies_both_real_clients() -> None:
    # 1!7.0.0 and 1!7.4.1 parse every dotted part with int() (the job class the first three).
    parts = tuple(int(part) for part in V1_VERSION.split("."))
    assert (0, 1, 0) <= parts < (7, 0, 0)
    assert (0, 1, 0) <= parts[:3] < (7, 0, 0)


def test_allotment_version_reply_carries_the_package_version() -> None:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    expected = tomllib.loads(pyproject.read_text())["project"]["version"]
    reply = allotment_version_reply()
    assert reply.model_dump() == {"server": "allotment", "version": expected, "protocol": 1}


@pytest.mark.parametrize(
    ("args", "dims", "max_dead_boards"),
    [
        ([], (), None),
        ([1], (1,), None),
        ([7], (7,), None),
        ([2, 3], (2, 3), None),
        ([1, 2, 0], (1, 2, 0), None),
        ([1, 2, 0, 5], (1, 2, 0), 5),
        ([-3], (-3,), None),
    ],
)
def test_create_job_forms(
    args: list[int], dims: tuple[int, ...], max_dead_boards: int | None
) -> None:
    bound = bind("create_job", args, {"owner": "me"})
    assert isinstance(bound, CreateJobArgs)
    assert bound.dims == dims
    assert bound.args == tuple(args)
    assert bound.max_dead_boards == max_dead_boards
    assert (bound.keepalive_s, bound.min_ratio, bound.require_torus) == (60.0, 0.0, False)


def test_create_job_nulls_from_the_new_client_mean_defaults() -> None:
    bound = bind("create_job", [4], {"owner": "me", **_ALL_NULL_OPTIONS})
    assert bound == CreateJobArgs(args=(4,), owner="me")


def test_create_job_keepalive_null_means_never_expire() -> None:
    bound = bind("create_job", [], {"owner": "me", "keepalive": None})
    assert isinstance(bound, CreateJobArgs)
    assert bound.keepalive_s is None


def test_create_job_options_are_converted() -> None:
    bound = bind(
        "create_job",
        [3],
        {
            "owner": "me",
            "keepalive": 5,
            "tags": ["a", "b"],
            "min_ratio": 1,
            "max_dead_links": 2,
            "require_torus": True,
            "client": "old-client",
        },
    )
    assert bound == CreateJobArgs(
        args=(3,),
        owner="me",
        keepalive_s=5.0,
        tags=("a", "b"),
        min_ratio=1.0,
        max_dead_links=2,
        require_torus=True,
    )
    assert isinstance(bound, CreateJobArgs)
    assert bound.listed_kwargs() == {
        "machine": None,
        "tags": ["a", "b"],
        "min_ratio": 1.0,
        "max_dead_boards": None,
        "max_dead_links": 2,
        "require_torus": True,
    }


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ([], {}, "owner must be specified for all jobs"),
        ([], {"owner": None}, "owner must be specified for all jobs"),
        (
            [1],
            {"owner": "me", "color": "red"},
            "create_job() got an unexpected keyword argument 'color'",
        ),
        (
            [1, 2, 3, 4, 5],
            {"owner": "me"},
            "create_job() takes from 0 to 4 positional arguments but 5 were given",
        ),
        (
            [1, 2, 0, 1],
            {"owner": "me", "max_dead_boards": 2},
            "got multiple values for argument 'max_dead_boards'",
        ),
        (["2"], {"owner": "me"}, "argument 'args[0]' must be an integer, not '2'"),
        ([True], {"owner": "me"}, "argument 'args[0]' must be an integer, not True"),
        ([10**100], {"owner": "me"}, "argument 'args[0]' is out of range"),
        ([], {"owner": 5}, "argument 'owner' must be a string, not 5"),
        (
            [],
            {"owner": "me", "keepalive": "soon"},
            "argument 'keepalive' must be a non-negative number",
        ),
        ([], {"owner": "me", "keepalive": -1}, "not -1"),
        ([], {"owner": "me", "min_ratio": "x"}, "argument 'min_ratio' must be a number, not 'x'"),
        (
            [],
            {"owner": "me", "require_torus": 1},
            "argument 'require_torus' must be a boolean, not 1",
        ),
        ([], {"owner": "me", "tags": "default"}, "argument 'tags' must be a list of strings"),
        ([], {"owner": "me", "tags": [1]}, "argument 'tags' must be a list of strings"),
        ([], {"owner": "me", "tags": ["t"] * (MAX_LIST_ITEMS + 1)}, "more than 256 items"),
        ([], {"owner": "x" * 5000}, "longer than 1024 characters"),
        (
            [],
            {"owner": "me", "max_dead_boards": -1},
            "must be a non-negative integer or null, not -1",
        ),
        ([], {"owner": "me", "machine": "m", "tags": ["a"]}, "only one of machine and tags"),
    ],
)
def test_create_job_errors(args: list[Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError) as info:
        bind("create_job", args, kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("command", "args", "kwargs", "message"),
    [
        (
            "get_job_state",
            [],
            {},
            "get_job_state() missing 1 required positional argument: 'job_id'",
        ),
        (
            "get_job_state",
            [1, 2],
            {},
            "get_job_state() takes 1 positional argument but 2 were given",
        ),
        (
            "get_job_state",
            [1],
            {"job_id": 1},
            "get_job_state() got multiple values for argument 'job_id'",
        ),
        (
            "get_job_state",
            [1],
            {"color": 1},
            "get_job_state() got an unexpected keyword argument 'color'",
        ),
        (
            "destroy_job",
            [1, "r", 3],
            {},
            "destroy_job() takes from 1 to 2 positional arguments but 3 were given",
        ),
        (
            "destroy_job",
            [],
            {"reason": "x"},
            "destroy_job() missing 1 required positional argument: 'job_id'",
        ),
        ("version", [1], {}, "version() takes 0 positional arguments but 1 was given"),
        ("list_jobs", [], {"x": 1}, "list_jobs() got an unexpected keyword argument 'x'"),
        (
            "get_board_position",
            ["m", 1],
            {},
            "get_board_position() missing 2 required positional arguments: 'y' and 'z'",
        ),
        (
            "get_board_position",
            [],
            {},
            "missing 4 required positional arguments: 'machine_name', 'x', 'y', and 'z'",
        ),
        (
            "get_board_position",
            ["m", 1, "a", 3],
            {},
            "get_board_position() argument 'y' must be an integer, not 'a'",
        ),
        (
            "get_board_at_position",
            [3, 0, 0, 0],
            {},
            "argument 'machine_name' must be a string, not 3",
        ),
        ("notify_job", ["abc"], {}, "notify_job() argument 'job_id' must be a job id"),
        (
            "notify_machine",
            [5],
            {},
            "notify_machine() argument 'machine_name' must be a string, not 5",
        ),
        (
            "destroy_job",
            [1],
            {"reason": 42},
            "destroy_job() argument 'reason' must be a string, not 42",
        ),
    ],
)
def test_signature_errors_read_like_python(
    command: str, args: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(CommandError) as info:
        bind(command, args, kwargs)
    assert message in str(info.value)


def test_unknown_command_is_named() -> None:
    with pytest.raises(UnknownCommandError, match="'frobnicate'"):
        bind("frobnicate", [], {})


@pytest.mark.parametrize(
    ("raw", "job_id"),
    [
        (7, 7),
        ("7", None),
        ("abc", None),
        (None, None),
        (7.0, 7),
        (7.5, None),
        (True, None),
        (-1, None),
        (10**100, None),
        ([7], None),
    ],
)
def test_job_id_that_is_not_an_int_binds_to_none(raw: Any, job_id: int | None) -> None:
    assert bind("get_job_state", [raw], {}) == GetJobStateArgs(job_id=job_id)


def test_positional_or_keyword_and_client_dropped() -> None:
    assert bind("destroy_job", [], {"job_id": 3, "reason": "x", "client": "c"}) == DestroyJobArgs(
        job_id=3, reason="x"
    )
    assert bind("destroy_job", [3, None], {}) == DestroyJobArgs(job_id=3)
    assert bind("get_board_position", ["m"], {"z": 1, "x": 2, "y": 3}) == GetBoardPositionArgs(
        machine_name="m", x=2, y=3, z=1
    )
    assert bind("list_jobs", [], {"client": "c"}) == ListJobsArgs()


def test_notify_defaults_to_all() -> None:
    assert bind("notify_job", [], {}) == NotifyJobArgs(job_id=None)
    assert bind("notify_job", [None], {}) == NotifyJobArgs(job_id=None)
    assert bind("notify_job", [4], {}) == NotifyJobArgs(job_id=4)
    assert bind("no_notify_job", [4.0], {}) == NoNotifyJobArgs(job_id=4)  # as job 4 is named
    assert bind("notify_machine", [], {"machine_name": "m"}) == NotifyMachineArgs(machine_name="m")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"machine": "m", "x": 1, "y": 2, "z": 0}, WhereIsBoardArgs(machine="m", x=1, y=2, z=0)),
        (
            {"machine": "m", "cabinet": 1, "frame": 2, "board": 3},
            WhereIsPhysicalArgs(machine="m", cabinet=1, frame=2, board=3),
        ),
        (
            {"machine": "m", "chip_x": -1, "chip_y": 5},
            WhereIsChipArgs(machine="m", chip_x=-1, chip_y=5),
        ),
        ({"job_id": 3, "chip_x": 1, "chip_y": 2}, WhereIsJobChipArgs(job_id=3, chip_x=1, chip_y=2)),
        (
            {"job_id": "x", "chip_x": 1, "chip_y": 2},
            WhereIsJobChipArgs(job_id=None, chip_x=1, chip_y=2),
        ),
        # Unused keys sent as null do not count.
        (
            {"job_id": 3, "chip_x": 1, "chip_y": 2, "machine": None, "x": None},
            WhereIsJobChipArgs(job_id=3, chip_x=1, chip_y=2),
        ),
    ],
)
def test_where_is_forms(kwargs: dict[str, Any], expected: object) -> None:
    assert bind("where_is", [], kwargs) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ([], {"machine": "m", "x": 1}, "Invalid arguments: machine, x"),
        ([], {}, "Invalid arguments: "),
        (
            [],
            {"machine": "m", "x": 1, "y": 1, "z": 1, "chip_x": 1},
            "Invalid arguments: chip_x, machine, x, y, z",
        ),
        ([1], {}, "where_is() takes 0 positional arguments but 1 was given"),
        (
            [],
            {"machine": "m", "x": "1", "y": 1, "z": 1},
            "argument 'x' must be an integer, not '1'",
        ),
        (
            [],
            {"machine": 4, "chip_x": 1, "chip_y": 1},
            "argument 'machine' must be a string, not 4",
        ),
    ],
)
def test_where_is_errors(args: list[Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError) as info:
        bind("where_is", args, kwargs)
    assert message in str(info.value)


class _EchoArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    count: int = 1


def test_registered_extension_binds_through_its_model() -> None:
    spec = register(
        CommandSpec("test_echo", (Param("token"), Param("count", 1)), _EchoArgs, list[str])
    )
    assert get_spec("test_echo") is spec
    assert "test_echo" in command_table()
    assert bind("test_echo", ["t"], {"count": 3}) == _EchoArgs(token="t", count=3)
    assert bind("test_echo", ["t"], {"count": None}) == _EchoArgs(token="t", count=1)
    with pytest.raises(CommandError, match=r"test_echo\(\) argument 'count' is invalid.*'x'"):
        bind("test_echo", ["t", "x"], {})
    with pytest.raises(DuplicateCommandError, match="'test_echo'"):
        register(spec)
    with pytest.raises(DuplicateCommandError, match="'version'"):
        register(CommandSpec("version", (), _EchoArgs, str))


def test_check_int_bounds() -> None:
    assert check_int("c", "n", MAX_INT) == MAX_INT
    with pytest.raises(CommandError, match="out of range"):
        check_int("c", "n", MAX_INT + 1)


_raw = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=3)
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from(sorted(V1_COMMAND_NAMES)),
    args=st.lists(_raw, max_size=5),
    kwargs=st.dictionaries(
        st.sampled_from(
            [
                "owner",
                "job_id",
                "machine",
                "x",
                "chip_x",
                "chip_y",
                "tags",
                "reason",
                "keepalive",
                "machine_name",
                "z",
                "y",
                "client",
            ]
        ),
        _raw,
        max_size=5,
    ),
)
def test_bind_gives_a_model_or_a_command_error(
    command: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    try:
        bound = bind(command, args, kwargs)
    except CommandError:
        return
    assert isinstance(bound, BaseModel)


# --- the fast construction of argument models ----------------------------------------------


def _plain_specs() -> list[CommandSpec]:
    return [spec for spec in command_table().values() if spec.is_plain_model]


def test_hot_commands_build_their_arguments_the_fast_way() -> None:
    names = {spec.name for spec in _plain_specs()}
    assert {"get_job_state", "job_keepalive", "get_job_machine_info", "destroy_job"} <= names


@pytest.mark.parametrize("spec", _plain_specs(), ids=lambda spec: spec.name)
def test_construct_plain_builds_what_model_construct_builds(spec: CommandSpec) -> None:
    fields = {
        p.field or p.name: (None if p.default is REQUIRED else p.default) for p in spec.all_params
    }
    fast = construct_plain(spec.arg_model, dict(fields))
    slow = spec.arg_model.model_construct(**fields)
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump()
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__
    assert fast.__pydantic_private__ == slow.__pydantic_private__


def test_bind_create_job_gives_the_model_pydantic_would() -> None:
    bound = bind("create_job", [2, 3], {"owner": "me", "keepalive": 30.0, "tags": ["a"]})
    expected = CreateJobArgs.model_construct(**bound.model_dump())
    assert bound == expected
    assert bound.model_fields_set == expected.model_fields_set


def test_a_model_with_an_alias_is_not_plain() -> None:
    class Aliased(BaseModel):
        job_id: int = Field(alias="id")

    assert not is_plain_model(Aliased, {"job_id"})
    assert not is_plain_model(GetJobStateArgs, {"job_id", "extra"})


@pytest.mark.parametrize(
    ("job_id", "message"),
    [
        ("7", "must be an integer, not '7'"),
        (None, "must be an integer, not None"),
        (True, "must be an integer, not True"),
        (-1, "is not a job id: -1"),
        (2**63, "is not a job id: 9223372036854775808"),
    ],
)
@pytest.mark.parametrize("command", ["load_image", "start_run", "fetch_results"])
def test_the_dispatch_commands_refuse_what_is_no_job_id_by_name(
    command: str, job_id: object, message: str
) -> None:
    # The v1 commands take a bad id for a job that does not exist, as the reference does;
    # the extension commands have no such client to follow and say what was wrong.
    import protocol.dispatch  # noqa: F401 - registers the extension commands

    kwargs = {"job_id": job_id, "n_bytes": 1, "sha256": "0" * 64, "token": "t"}
    spec = get_spec(command)
    wanted = {p.name for p in spec.all_params}
    with pytest.raises(CommandError, match=re.escape(f"{command}() argument 'job_id' {message}")):
        bind(command, [], {k: v for k, v in kwargs.items() if k in wanted})


def test_the_dispatch_commands_take_an_integral_float_id_as_v1_does() -> None:
    import protocol.dispatch  # noqa: F401 - registers the extension commands

    kwargs = {"job_id": 7.0, "n_bytes": 1, "sha256": "0" * 64}
    assert bind("load_image", [], kwargs).job_id == 7
    assert bind("get_job_state", [7.0], {}).job_id == 7
