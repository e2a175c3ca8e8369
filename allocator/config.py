"""The server configuration: a TOML file read into frozen pydantic models and `Machine`s.

`load_config(path)` reads and validates a file; `default_config()` returns the embedded
1,200-board machine (``allocator/data/default-machine.toml``). Every error is a
`ConfigError` whose message names the key as a dotted path (``machines[0].dead_boards[1]``)
and the offending value. A file looks like::

    [server]
    seconds_before_free = 30.0
    [power]
    power_on_delay_s = 5.0
    [[machines]]                  # priority order
    name = "spinn-1200"
    width = 20                    # triads
    height = 20
    board_locations = "spinn1m-ethernet-chips.csv"   # SpiNNer CSV, or inline [[x,y,z,c,f,b]]
    dead_boards = [[1, 2, 0]]
    dead_links = [[1, 2, 0, "north"]]
    [machines.addresses]          # the standard address scheme, see allocator.machine
    base_ip = "10.11.0.0"

A machine of one board is written ``single_board = {bmp_ip = "...", spinnaker_ip = "..."}``
instead of a size and layout.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from allocator.dispatch.settings import DispatchSettings
from allocator.errors import ConfigError
from allocator.machine import (
    FrameCF,
    Machine,
    MachineError,
    board_locations_from_spinner_csv,
    standard_ips,
)
from machine_models.geometry import BoardCFB, BoardXYZ, Link

__all__ = [
    "AddressSettings",
    "MachineSettings",
    "MetricsSettings",
    "MqttSettings",
    "PowerSettings",
    "ServerConfig",
    "ServerSettings",
    "SingleBoardSettings",
    "default_config",
    "load_config",
    "parse_config",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
_PositiveInt = Annotated[int, Field(ge=1)]
_Triple = tuple[int, int, int]


class ServerSettings(BaseModel):
    """The ``[server]`` table."""

    model_config = _FROZEN
    max_retired_jobs: Annotated[int, Field(ge=0)] = 1200
    seconds_before_free: _NonNegFloat = 30.0
    keepalive_check_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    starvation_s: _NonNegFloat = 600.0
    max_line_bytes: Annotated[int, Field(ge=1024)] = 65536
    max_connections: _PositiveInt = 4096
    idle_timeout_s: _NonNegFloat = 0.0
    operator_token: str = ""
    database_retry_s: _NonNegFloat = 30.0


class PowerSettings(BaseModel):
    """The ``[power]`` table: modelled BMP delays per frame request."""

    model_config = _FROZEN
    power_on_delay_s: _NonNegFloat = 5.0
    power_off_delay_s: _NonNegFloat = 1.0


class MetricsSettings(BaseModel):
    """The ``[metrics]`` table; port 0 disables the endpoint, ``"any"`` binds a free port.

    With ``"any"`` the log line ``metrics endpoint at http://ADDRESS:PORT/metrics``, written
    before the ready line, names the port bound (for tests and for several servers on one
    host).
    """

    model_config = _FROZEN
    address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] | Literal["any"] = 0

    @property
    def bind_port(self) -> int | None:
        """The port to bind (0: any free one), or None when the endpoint is disabled."""
        if self.port == "any":
            return 0
        return self.port or None


class MqttSettings(BaseModel):
    """The ``[mqtt]`` table; an empty url disables events."""

    model_config = _FROZEN
    url: str = ""
    topic_prefix: str = "allotment"
    queue_size: _PositiveInt = 10000


class AddressSettings(BaseModel):
    """A machine's ``addresses`` table: the standard address scheme."""

    model_config = _FROZEN
    base_ip: str = "192.168.0.0"
    cabinet_stride: str = "0.0.5.0"
    frame_stride: str = "0.0.1.0"
    board_stride: str = "0.0.0.8"
    bmp_offset: str = "0.0.0.0"
    spinnaker_offset: str = "0.0.0.1"


class SingleBoardSettings(BaseModel):
    """A machine's ``single_board`` table: one board and its BMP."""

    model_config = _FROZEN
    bmp_ip: str
    spinnaker_ip: str


class MachineSettings(BaseModel):
    """One ``[[machines]]`` entry as written in the file."""

    model_config = _FROZEN
    name: Annotated[str, Field(min_length=1)]
    tags: tuple[str, ...] = ("default",)
    width: _PositiveInt | None = None
    height: _PositiveInt | None = None
    board_locations: str | tuple[tuple[int, int, int, int, int, int], ...] | None = None
    dead_boards: tuple[_Triple, ...] = ()
    dead_links: tuple[tuple[int, int, int, int | str], ...] = ()
    addresses: AddressSettings = AddressSettings()
    bmp_ips: tuple[tuple[int, int, str], ...] = ()
    spinnaker_ips: tuple[tuple[int, int, int, str], ...] = ()
    single_board: SingleBoardSettings | None = None


class _FileModel(BaseModel):
    model_config = _FROZEN
    server: ServerSettings = ServerSettings()
    power: PowerSettings = PowerSettings()
    metrics: MetricsSettings = MetricsSettings()
    mqtt: MqttSettings = MqttSettings()
    dispatch: DispatchSettings = DispatchSettings()
    machines: tuple[MachineSettings, ...] = ()


class ServerConfig(BaseModel):
    """The whole validated configuration: settings plus machines in priority order."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    server: ServerSettings = ServerSettings()
    power: PowerSettings = PowerSettings()
    metrics: MetricsSettings = MetricsSettings()
    mqtt: MqttSettings = MqttSettings()
    dispatch: DispatchSettings = DispatchSettings()
    machines: tuple[Machine, ...] = ()

    def machine(self, name: str) -> Machine | None:
        """The machine with this name, or None."""
        return next((m for m in self.machines if m.name == name), None)


def _dotted(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in {"str", "int", "tuple[int, int, int, int, int, int]"} or "[" in part:
            # pydantic names the union member it tried; that is not part of the key
            continue
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{_dotted(first['loc'])}: {first['msg'].lower()} (got {first['input']!r})"


def _link(value: int | str, key: str) -> Link:
    if isinstance(value, str):
        try:
            return Link[value.strip().upper().replace("-", "_")]
        except KeyError:
            raise ConfigError(f"{key}: unknown link name {value!r}") from None
    if not 0 <= value <= 5:
        raise ConfigError(f"{key}: link number {value} is not 0-5")
    return Link(value)


def _read_locations(value: str, key: str, base_dir: Path | None) -> dict[BoardXYZ, BoardCFB]:
    candidates: list[Path] = []
    if base_dir is not None:
        candidates.append(base_dir / value)
    text: str | None = None
    for path in candidates:
        if path.is_file():
            text = path.read_text()
            break
    if text is None:
        shipped = resources.files("allocator").joinpath("data", value)
        if "/" not in value and "\\" not in value and shipped.is_file():
            text = shipped.read_text()
    if text is None:
        raise ConfigError(f"{key}: board location file {value!r} not found")
    try:
        return board_locations_from_spinner_csv(text)
    except MachineError as error:
        raise ConfigError(f"{key}: {error}") from None


def _build_machine(settings: MachineSettings, index: int, base_dir: Path | None) -> Machine:
    key = f"machines[{index}]"
    if settings.single_board is not None:
        for other in ("width", "height", "board_locations"):
            if getattr(settings, other) is not None:
                raise ConfigError(f"{key}.{other}: not allowed with single_board")
        try:
            return Machine.single_board(
                settings.name,
                settings.tags,
                settings.single_board.bmp_ip,
                settings.single_board.spinnaker_ip,
            )
        except MachineError as error:
            raise ConfigError(f"{key}.single_board: {error}") from None
    for needed in ("width", "height", "board_locations"):
        if getattr(settings, needed) is None:
            raise ConfigError(f"{key}.{needed}: missing")
    width, height = settings.width or 0, settings.height or 0
    if isinstance(settings.board_locations, str):
        locations = _read_locations(settings.board_locations, f"{key}.board_locations", base_dir)
    else:
        locations = {}
        for i, (x, y, z, c, f, b) in enumerate(settings.board_locations or ()):
            locations[BoardXYZ(x, y, z)] = BoardCFB(c, f, b)
            if not (0 <= x < width and 0 <= y < height and 0 <= z < 3):
                raise ConfigError(
                    f"{key}.board_locations[{i}]: board {(x, y, z)} is outside the "
                    f"{width} x {height} grid"
                )

    def inside(board: _Triple) -> bool:
        x, y, z = board
        return 0 <= x < width and 0 <= y < height and 0 <= z < 3

    dead_boards: set[BoardXYZ] = set()
    for i, board in enumerate(settings.dead_boards):
        if not inside(board):
            raise ConfigError(
                f"{key}.dead_boards[{i}]: board {board} is outside the {width} x {height} grid"
            )
        dead_boards.add(BoardXYZ(*board))
    dead_links: set[tuple[BoardXYZ, Link]] = set()
    for i, (x, y, z, link) in enumerate(settings.dead_links):
        if not inside((x, y, z)):
            raise ConfigError(
                f"{key}.dead_links[{i}]: board {(x, y, z)} is outside the {width} x {height} grid"
            )
        dead_links.add((BoardXYZ(x, y, z), _link(link, f"{key}.dead_links[{i}]")))
    try:
        bmp_ips, spinnaker_ips = standard_ips(
            settings.name, locations, **settings.addresses.model_dump()
        )
    except MachineError as error:
        raise ConfigError(f"{key}.addresses: {error}") from None
    for c, f, ip in settings.bmp_ips:
        bmp_ips[FrameCF(c, f)] = ip
    for x, y, z, ip in settings.spinnaker_ips:
        spinnaker_ips[BoardXYZ(x, y, z)] = ip
    try:
        return Machine(
            name=settings.name,
            tags=frozenset(settings.tags),
            width_triads=width,
            height_triads=height,
            dead_boards=frozenset(dead_boards),
            dead_links=frozenset(dead_links),
            board_locations=locations,
            bmp_ips=bmp_ips,
            spinnaker_ips=spinnaker_ips,
        )
    except MachineError as error:
        raise ConfigError(f"{key}: {error}") from None


def parse_config(data: dict[str, Any], base_dir: Path | None = None) -> ServerConfig:
    """Validate an already-parsed TOML document.

    Args:
        data: The document, as `tomllib` returns it.
        base_dir: Directory relative CSV paths are resolved against; None means only
            CSVs shipped in ``allocator/data`` are found.

    Raises:
        ConfigError: Names the first bad key and its value.
    """
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_validation_message(error)) from None
    machines: list[Machine] = []
    names: dict[str, int] = {}
    owners: dict[str, str] = {}
    for index, settings in enumerate(model.machines):
        if settings.name in names:
            raise ConfigError(
                f"machines[{index}].name: {settings.name!r} is already the name of "
                f"machines[{names[settings.name]}]"
            )
        names[settings.name] = index
        machine = _build_machine(settings, index, base_dir)
        for ip in [*machine.bmp_ips.values(), *machine.spinnaker_ips.values()]:
            if ip in owners:
                raise ConfigError(
                    f"machines[{index}]: ip address {ip} is also used by machine {owners[ip]!r}"
                )
        for ip in [*machine.bmp_ips.values(), *machine.spinnaker_ips.values()]:
            owners[ip] = machine.name
        machines.append(machine)
    return ServerConfig(
        server=model.server,
        power=model.power,
        metrics=model.metrics,
        mqtt=model.mqtt,
        dispatch=model.dispatch,
        machines=tuple(machines),
    )


def load_config(path: Path | str) -> ServerConfig:
    """Read and validate a configuration file.

    Args:
        path: The TOML file; relative CSV paths in it are resolved against its directory.

    Raises:
        ConfigError: The file cannot be read, is not TOML, or a key is invalid; the
            message names the key and the value (or the line of a syntax error).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not utf-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid toml: {error}") from None
    return parse_config(data, path.parent)


def default_config() -> ServerConfig:
    """The embedded default: the 1,200-board (20 x 20 triad) machine ``spinn-1200``."""
    text = resources.files("allocator").joinpath("data", "default-machine.toml").read_text()
    return parse_config(tomllib.loads(text), None)
