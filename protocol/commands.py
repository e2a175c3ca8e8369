"""The command table: each command's signature, and binding of raw args/kwargs to its model.

The reference server calls `command(*args, **kwargs)` on a Python object, so clients rely on
Python's binding rules: any parameter by position or by name, defaults, keyword-only
parameters. `bind` reproduces those rules from a declarative `CommandSpec`, with Python's own
error messages, then checks every value's type and size::

    {"command": "destroy_job", "args": [7], "kwargs": {"reason": "done"}}
        --bind--> DestroyJobArgs(job_id=7, reason="done")
    {"command": "get_job_state", "args": []}
        --bind--> CommandError("get_job_state() missing 1 required positional argument:
                                'job_id'")

Rules common to every command: a `"client"` keyword is dropped (old clients send it); a
keyword given as `null` means "use the default" (so the 1!7.4.1 client, which sends every
create_job option, works) unless the parameter says otherwise (`keepalive: null` means "never
expire"). A `job_id` that is not an integer binds to None ("no such job"), as the reference
lets it fall through to a failed lookup.

The table is open: `register(spec)` adds extension commands (same envelope, new names);
`bind` looks commands up in the combined table. One extension is built in:
`allotment_version` answers the server's name and real package version.

The v1 `version` command answers `V1_VERSION` = "6.0.0". Both spalloc client releases split
the answer on dots, parse every part with `int()` and require (0, 1, 0) <= version < (7, 0, 0);
the reference's own "1!7.0.0" fails that check. "6.0.0" is the highest plain release inside the
range, so clients that narrow the range from below keep accepting it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from protocol.errors import CommandError, DuplicateCommandError, UnknownCommandError
from protocol.messages import (
    AllotmentVersionArgs,
    AllotmentVersionReply,
    CreateJobArgs,
    DestroyJobArgs,
    GetBoardAtPositionArgs,
    GetBoardPositionArgs,
    GetJobMachineInfoArgs,
    GetJobStateArgs,
    JobKeepaliveArgs,
    JobListEntry,
    JobMachineInfoReply,
    JobStateReply,
    ListJobsArgs,
    ListMachinesArgs,
    MachineListEntry,
    NoNotifyJobArgs,
    NoNotifyMachineArgs,
    NotifyJobArgs,
    NotifyMachineArgs,
    PowerOffJobBoardsArgs,
    PowerOnJobBoardsArgs,
    VersionArgs,
    WhereIsBoardArgs,
    WhereIsChipArgs,
    WhereIsJobChipArgs,
    WhereIsPhysicalArgs,
    WhereIsReply,
    WireBoardCFB,
    WireBoardXYZ,
)

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "ALLOTMENT_SERVER_NAME",
    "ALLOTMENT_VERSION_SPEC",
    "EXTENSION_PROTOCOL_VERSION",
    "MAX_INT",
    "MAX_LIST_ITEMS",
    "MAX_STRING_CHARS",
    "REQUIRED",
    "V1_COMMAND_NAMES",
    "V1_SPECS",
    "V1_VERSION",
    "Binder",
    "Check",
    "CommandSpec",
    "Param",
    "allotment_version_reply",
    "bind",
    "bind_spec",
    "check_bool",
    "check_float",
    "check_int",
    "check_job_id",
    "check_optional_int",
    "check_optional_str",
    "check_str",
    "check_str_list",
    "command_table",
    "get_spec",
    "package_version",
    "register",
]

V1_VERSION: Final = "6.0.0"
"""What the v1 `version` command answers (see the module docstring for why)."""

ALLOTMENT_SERVER_NAME: Final = "allotment"
EXTENSION_PROTOCOL_VERSION: Final = 1
"""Numbers the set of extension commands; bumped when one changes incompatibly."""

MAX_INT: Final = 2**31 - 1
"""Bound on sizes and coordinates; larger values are rejected rather than computed with."""
_MAX_JOB_ID: Final = 2**63 - 1
MAX_STRING_CHARS: Final = 1024
MAX_LIST_ITEMS: Final = 256
_MAX_KEEPALIVE_S: Final = 1e9
_SHOW_CHARS: Final = 40
_SOURCE_VERSION: Final = "0.1.0"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final[Any] = _Required()
"""Default of a parameter that has none."""

Check = Callable[[str, str, Any], Any]
"""`check(command, name, value) -> value`: converts one raw value or raises `CommandError`."""

Binder = Callable[["CommandSpec", Sequence[Any], Mapping[str, Any]], BaseModel]
"""A custom binder, for commands whose calling convention is not a plain signature."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a command.

    Attributes:
        name: the parameter (and keyword) name.
        default: the default value, or `REQUIRED`.
        check: converts/validates the raw value (None: leave it to the argument model).
        is_null_default: a keyword given as null means the default (else null is a value).
        field: the argument model's field name, when it differs from `name`.
    """

    name: str
    default: Any = REQUIRED
    check: Check | None = None
    is_null_default: bool = True
    field: str | None = None

    @property
    def is_required(self) -> bool:
        """Whether the call must supply this parameter."""
        return self.default is REQUIRED


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """The signature and types of one command.

    Attributes:
        name: the command name on the wire.
        params: positional-or-keyword parameters, in Python call order.
        keyword_only: keyword-only parameters.
        arg_model: the model `bind` returns.
        reply_type: the type of the `return` value (a model, `list[Model]`, `int`, None...).
        summary: one line for help texts.
        binder: replaces the generic Python-style binding (e.g. `where_is`).
    """

    name: str
    params: tuple[Param, ...]
    arg_model: type[BaseModel]
    reply_type: Any
    summary: str = ""
    keyword_only: tuple[Param, ...] = ()
    binder: Binder | None = None
    # Derived once, for `bind` (which runs for every request).
    all_params: tuple[Param, ...] = field(init=False, repr=False, compare=False)
    is_prechecked: bool = field(init=False, repr=False, compare=False)
    is_plain_model: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        everything = (*self.params, *self.keyword_only)
        object.__setattr__(self, "all_params", everything)
        # Every value is checked and converted by its parameter: no model validation needed.
        object.__setattr__(self, "is_prechecked", all(p.check is not None for p in everything))
        object.__setattr__(
            self,
            "is_plain_model",
            is_plain_model(self.arg_model, {p.field or p.name for p in everything}),
        )


# --- value checks ----------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _type_error(command: str, name: str, expected: str, value: Any) -> CommandError:
    return CommandError(f"{command}() argument '{name}' must be {expected}, not {_show(value)}")


def check_int(command: str, name: str, value: Any) -> int:
    """An integer in [-MAX_INT, MAX_INT] (booleans are not integers here)."""
    if type(value) is not int:
        raise _type_error(command, name, "an integer", value)
    if not -MAX_INT <= value <= MAX_INT:
        raise CommandError(f"{command}() argument '{name}' is out of range: {_show(value)}")
    return value


def check_optional_int(command: str, name: str, value: Any) -> int | None:
    """A non-negative integer up to MAX_INT, or None."""
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise _type_error(command, name, "a non-negative integer or null", value)
    return value


def check_float(command: str, name: str, value: Any) -> float:
    """A finite number (integers accepted)."""
    if type(value) not in (int, float) or not math.isfinite(value) or abs(value) > MAX_INT:
        raise _type_error(command, name, "a number", value)
    return float(value)


def check_bool(command: str, name: str, value: Any) -> bool:
    """A JSON boolean."""
    if type(value) is not bool:
        raise _type_error(command, name, "a boolean", value)
    return value


def check_str(command: str, name: str, value: Any) -> str:
    """A string of at most MAX_STRING_CHARS characters of text (JSON may escape a lone
    UTF-16 surrogate, which is no character: the store and every reply would fail on it)."""
    if type(value) is not str:
        raise _type_error(command, name, "a string", value)
    if len(value) > MAX_STRING_CHARS:
        raise CommandError(
            f"{command}() argument '{name}' is longer than {MAX_STRING_CHARS} characters"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(
                f"{command}() argument '{name}' is not valid text (a lone surrogate)"
            ) from None
    return value


def check_optional_str(command: str, name: str, value: Any) -> str | None:
    """A string of at most MAX_STRING_CHARS characters, or None."""
    return None if value is None else check_str(command, name, value)


def check_str_list(command: str, name: str, value: Any) -> tuple[str, ...] | None:
    """A list of at most MAX_LIST_ITEMS strings, or None."""
    if value is None:
        return None
    if type(value) is not list or not all(type(item) is str for item in value):
        raise _type_error(command, name, "a list of strings or null", value)
    if len(value) > MAX_LIST_ITEMS:
        raise CommandError(f"{command}() argument '{name}' has more than {MAX_LIST_ITEMS} items")
    return tuple(check_str(command, name, item) for item in value)


def check_job_id(command: str, name: str, value: Any) -> int | None:
    """A job id: any integer in range, else None ("no such job", as in the reference).

    An integral float (7.0) is the job it names: the reference looked ids up in a dict,
    where 7.0 == 7.
    """
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is int and 0 <= value <= _MAX_JOB_ID:
        return value
    return None


def _check_watch_job_id(command: str, name: str, value: Any) -> int | None:
    """A job to watch (7.0 is job 7, as for `check_job_id`), or None for every job; anything
    else is refused rather than taken for "every job" or for none."""
    if value is None:
        return None
    job_id = check_job_id(command, name, value)
    if job_id is None:
        raise _type_error(command, name, "a job id (integer) or null", value)
    return job_id


def _check_keepalive(command: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if (
        type(value) not in (int, float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_KEEPALIVE_S
    ):
        raise _type_error(command, name, "a non-negative number of seconds or null", value)
    return float(value)


# --- generic Python-style binding ------------------------------------------------------------


def _quoted_list(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _missing_error(command: str, names: Sequence[str], kind: str) -> CommandError:
    plural = "argument" if len(names) == 1 else "arguments"
    return CommandError(
        f"{command}() missing {len(names)} required {kind} {plural}: {_quoted_list(names)}"
    )


def _too_many_positional(command: str, params: Sequence[Param], n_given: int) -> CommandError:
    n_max = len(params)
    n_min = sum(1 for p in params if p.is_required)
    takes = f"from {n_min} to {n_max}" if n_min != n_max else str(n_max)
    plural = "argument" if n_max == 1 and n_min == n_max else "arguments"
    were = "was" if n_given == 1 else "were"
    return CommandError(f"{command}() takes {takes} positional {plural} but {n_given} {were} given")


def _bind_values(
    spec: CommandSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Bind Python-style and check values; returns field name -> value."""
    command = spec.name
    params = spec.params
    if len(args) > len(params):
        raise _too_many_positional(command, params, len(args))
    values: dict[str, Any] = {}
    for param, value in zip(params, args, strict=False):
        values[param.name] = value
    if kwargs:
        keyword_only = spec.keyword_only
        for key, value in kwargs.items():
            if key == "client":
                continue
            found = _find_param(params, key) or _find_param(keyword_only, key)
            if found is None:
                raise CommandError(f"{command}() got an unexpected keyword argument {_show(key)}")
            if key in values:
                raise CommandError(f"{command}() got multiple values for argument '{key}'")
            if value is None and found.is_null_default and not found.is_required:
                continue
            values[key] = value
    fields: dict[str, Any] = {}
    for param in spec.all_params:
        name = param.field or param.name
        if param.name in values:
            value = values[param.name]
            # the message names the argument as the client sent it, not the field it fills
            checked = value if param.check is None else param.check(command, param.name, value)
            fields[name] = checked
        elif param.default is REQUIRED:
            raise _missing_required(spec, values)
        else:
            fields[name] = param.default
    return fields


def _missing_required(spec: CommandSpec, values: Mapping[str, Any]) -> CommandError:
    missing = [p.name for p in spec.params if p.is_required and p.name not in values]
    if missing:
        return _missing_error(spec.name, missing, "positional")
    missing = [p.name for p in spec.keyword_only if p.is_required and p.name not in values]
    return _missing_error(spec.name, missing, "keyword-only")


def _find_param(params: Sequence[Param], name: str) -> Param | None:
    for param in params:
        if param.name == name:
            return param
    return None


def is_plain_model(model: type[BaseModel], field_names: set[str]) -> bool:
    """Whether `construct_plain` may build `model` from a dict with exactly `field_names`.

    That is: those are all its fields, none has an alias, and it has no root, no extra
    fields, no private attributes and no post-init hook, so the instance is its field dict.
    """
    fields = model.model_fields
    return (
        set(fields) == field_names
        and all(f.alias is None and f.validation_alias is None for f in fields.values())
        and not model.__pydantic_root_model__
        and not model.__pydantic_post_init__
        and not model.__private_attributes__
        and model.model_config.get("extra") != "allow"
    )


def construct_plain(model: type[M], fields: dict[str, Any]) -> M:
    """`model.model_construct(**fields)` for a plain model given every field (see above).

    The same instance pydantic builds, without its generic handling of aliases, defaults
    and extras: `bind` runs for every request, and that handling was a third of its time.
    tests/protocol/test_commands.py checks that both give equal instances.
    """
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(fields))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def _make_model(spec: CommandSpec, fields: dict[str, Any]) -> BaseModel:
    if spec.is_prechecked:
        # Every value was checked and converted already: skip a second validation.
        if spec.is_plain_model:
            return construct_plain(spec.arg_model, fields)
        return spec.arg_model.model_construct(**fields)
    try:
        return spec.arg_model.model_validate(fields)
    except ValidationError as e:
        error = e.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "?"
        raise CommandError(
            f"{spec.name}() argument '{name}' is invalid: {error['msg'].lower()}, "
            f"not {_show(error.get('input'))}"
        ) from None


# --- custom binders --------------------------------------------------------------------------

_CREATE_JOB_MAX_POSITIONAL: Final = 4


def _bind_create_job(
    spec: CommandSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> BaseModel:
    command = spec.name
    if len(args) > _CREATE_JOB_MAX_POSITIONAL:
        raise CommandError(
            f"{command}() takes from 0 to {_CREATE_JOB_MAX_POSITIONAL} positional arguments "
            f"but {len(args)} were given"
        )
    dims = tuple(check_int(command, f"args[{i}]", value) for i, value in enumerate(args))
    if kwargs.get("owner") is None:
        raise CommandError("owner must be specified for all jobs")
    if len(dims) == _CREATE_JOB_MAX_POSITIONAL and kwargs.get("max_dead_boards") is not None:
        raise CommandError(f"{command}() got multiple values for argument 'max_dead_boards'")
    fields = _bind_values(spec, (), kwargs)
    if len(dims) == _CREATE_JOB_MAX_POSITIONAL:
        fields["max_dead_boards"] = check_optional_int(command, "max_dead_boards", dims[3])
    if fields["machine"] is not None and fields["tags"] is not None:
        raise CommandError("only one of machine and tags may be specified for a job")
    fields["args"] = dims
    if _create_job_is_plain(spec):
        return construct_plain(CreateJobArgs, fields)
    return CreateJobArgs.model_construct(**fields)


@functools.cache
def _create_job_is_plain(spec: CommandSpec) -> bool:
    return is_plain_model(CreateJobArgs, {p.field or p.name for p in spec.all_params} | {"args"})


_WHERE_IS_FORMS: Final[dict[frozenset[str], type[BaseModel]]] = {
    frozenset(("machine", "x", "y", "z")): WhereIsBoardArgs,
    frozenset(("machine", "cabinet", "frame", "board")): WhereIsPhysicalArgs,
    frozenset(("machine", "chip_x", "chip_y")): WhereIsChipArgs,
    frozenset(("job_id", "chip_x", "chip_y")): WhereIsJobChipArgs,
}


def _bind_where_is(spec: CommandSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BaseModel:
    command = spec.name
    if args:
        were = "was" if len(args) == 1 else "were"
        raise CommandError(f"{command}() takes 0 positional arguments but {len(args)} {were} given")
    # A null keyword means "not given", so a client that sends every key, unused ones as
    # null, still names exactly one form.
    given = {k: v for k, v in kwargs.items() if k != "client" and v is not None}
    model = _WHERE_IS_FORMS.get(frozenset(given))
    if model is None:
        shown = ", ".join(sorted(given)[:8])
        raise CommandError(f"Invalid arguments: {shown}")
    fields: dict[str, Any] = {}
    for key, value in given.items():
        if key == "machine":
            fields[key] = check_str(command, key, value)
        elif key == "job_id":
            fields[key] = check_job_id(command, key, value)
        else:
            fields[key] = check_int(command, key, value)
    return model.model_construct(**fields)


# --- the table -------------------------------------------------------------------------------

_JOB_ID = Param("job_id", check=check_job_id, is_null_default=False)


def _job_command(name: str, model: type[BaseModel], reply_type: Any, summary: str) -> CommandSpec:
    return CommandSpec(name, (_JOB_ID,), model, reply_type, summary)


V1_SPECS: Final[tuple[CommandSpec, ...]] = (
    CommandSpec("version", (), VersionArgs, str, "the v1 version string"),
    CommandSpec(
        "create_job",
        (),
        CreateJobArgs,
        int,
        "request boards; returns the new job's id",
        keyword_only=(
            Param("owner", check=check_str),
            Param("keepalive", 60.0, _check_keepalive, is_null_default=False, field="keepalive_s"),
            Param("machine", None, check_optional_str),
            Param("tags", None, check_str_list),
            Param("min_ratio", 0.0, check_float),
            Param("max_dead_boards", None, check_optional_int),
            Param("max_dead_links", None, check_optional_int),
            Param("require_torus", False, check_bool),
        ),
        binder=_bind_create_job,
    ),
    _job_command("job_keepalive", JobKeepaliveArgs, None, "keep a job alive"),
    _job_command("get_job_state", GetJobStateArgs, JobStateReply, "a job's state"),
    _job_command(
        "get_job_machine_info", GetJobMachineInfoArgs, JobMachineInfoReply, "a job's boards"
    ),
    _job_command("power_on_job_boards", PowerOnJobBoardsArgs, None, "power on (reset) a job"),
    _job_command("power_off_job_boards", PowerOffJobBoardsArgs, None, "power off a job"),
    CommandSpec(
        "destroy_job",
        (_JOB_ID, Param("reason", None, check_optional_str)),
        DestroyJobArgs,
        None,
        "destroy a job, recording a reason",
    ),
    CommandSpec(
        "notify_job",
        (Param("job_id", None, _check_watch_job_id),),
        NotifyJobArgs,
        None,
        "watch a job (null: all jobs)",
    ),
    CommandSpec(
        "no_notify_job",
        (Param("job_id", None, _check_watch_job_id),),
        NoNotifyJobArgs,
        None,
        "stop watching a job (null: all)",
    ),
    CommandSpec(
        "notify_machine",
        (Param("machine_name", None, check_optional_str),),
        NotifyMachineArgs,
        None,
        "watch a machine (null: all machines)",
    ),
    CommandSpec(
        "no_notify_machine",
        (Param("machine_name", None, check_optional_str),),
        NoNotifyMachineArgs,
        None,
        "stop watching a machine (null: all)",
    ),
    CommandSpec("list_jobs", (), ListJobsArgs, list[JobListEntry], "live jobs, oldest first"),
    CommandSpec(
        "list_machines", (), ListMachinesArgs, list[MachineListEntry], "machines by priority"
    ),
    CommandSpec(
        "get_board_position",
        (
            Param("machine_name", check=check_str),
            Param("x", check=check_int),
            Param("y", check=check_int),
            Param("z", check=check_int),
        ),
        GetBoardPositionArgs,
        WireBoardCFB | None,
        "logical board -> [cabinet, frame, board]",
    ),
    CommandSpec(
        "get_board_at_position",
        (
            Param("machine_name", check=check_str),
            Param("cabinet", check=check_int),
            Param("frame", check=check_int),
            Param("board", check=check_int),
        ),
        GetBoardAtPositionArgs,
        WireBoardXYZ | None,
        "physical board -> [x, y, z]",
    ),
    CommandSpec(
        "where_is",
        (),
        WhereIsBoardArgs,
        WhereIsReply | None,
        "locate a board or chip (keyword-only, four forms)",
        binder=_bind_where_is,
    ),
)

V1_COMMAND_NAMES: Final = frozenset(spec.name for spec in V1_SPECS)
"""The 17 command names of the reference server (15 rows of its table: notify/no_notify pair up)."""

ALLOTMENT_VERSION_SPEC: Final = CommandSpec(
    "allotment_version",
    (),
    AllotmentVersionArgs,
    AllotmentVersionReply,
    "the server's name, package version and extension protocol number",
)

_REGISTRY: dict[str, CommandSpec] = {spec.name: spec for spec in V1_SPECS}
_REGISTRY[ALLOTMENT_VERSION_SPEC.name] = ALLOTMENT_VERSION_SPEC


def register(spec: CommandSpec) -> CommandSpec:
    """Add an extension command to the table that `bind` uses.

    Args:
        spec: the command; its name must not be taken.

    Returns:
        `spec`, so a module can write `FOO = register(CommandSpec(...))`.

    Raises:
        DuplicateCommandError: a command of that name exists (v1 names included).
    """
    if spec.name in _REGISTRY:
        raise DuplicateCommandError(spec.name)
    _REGISTRY[spec.name] = spec
    return spec


def command_table() -> Mapping[str, CommandSpec]:
    """A read-only live view of every registered command, v1 and extensions."""
    return MappingProxyType(_REGISTRY)


def get_spec(command: str) -> CommandSpec:
    """Look a command up.

    Raises:
        UnknownCommandError: no command has that name.
    """
    spec = _REGISTRY.get(command)
    if spec is None:
        raise UnknownCommandError(command)
    return spec


def bind(command: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BaseModel:
    """Bind raw JSON args/kwargs to the command's argument model, Python-style.

    Args:
        command: the command name.
        args: the request's `args`.
        kwargs: the request's `kwargs`.

    Returns:
        An instance of the command's `arg_model` (for `where_is`, one of its four forms).

    Raises:
        UnknownCommandError: no command has that name.
        CommandError: the arguments do not fit; the message reads like Python's.
    """
    return bind_spec(get_spec(command), args, kwargs)


def bind_spec(spec: CommandSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BaseModel:
    """`bind` for a command whose spec the caller holds (a server's own command table).

    Raises:
        CommandError: the arguments do not fit; the message reads like Python's.
    """
    if spec.binder is not None:
        return spec.binder(spec, args, kwargs)
    return _make_model(spec, _bind_values(spec, args, kwargs))


def package_version() -> str:
    """The installed allotment version (the source tree's when not installed)."""
    try:
        return metadata.version("allotment")
    except metadata.PackageNotFoundError:
        return _SOURCE_VERSION


def allotment_version_reply() -> AllotmentVersionReply:
    """The reply of `allotment_version`."""
    return AllotmentVersionReply(
        server=ALLOTMENT_SERVER_NAME,
        version=package_version(),
        protocol=EXTENSION_PROTOCOL_VERSION,
    )
