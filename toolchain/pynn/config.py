"""Where a script runs: ``spynnaker.cfg`` read the way sPyNNaker reads it, then setup()'s say.

``[Machine]`` keys ``spalloc_server``, ``spalloc_port``, ``spalloc_user`` and
``virtual_board`` are looked up in ``./spynnaker.cfg`` first, then ``~/.spynnaker.cfg``;
a keyword argument of ``setup()`` with the same name wins over both. With no server (or
``virtual_board = True``) the network runs virtually, on the chip model in this process.

Two keys of allotment's own hand the script a job already allocated for it (what a batch
runner writes for a powered standby): ``spalloc_job`` (its id) and ``spalloc_job_owner``
(the owner it was created with). The backend runs on that job when the network fits it.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.pynn.errors import NotSupportedError

__all__ = ["CONFIG_NAMES", "MachineSettings", "describe", "read_settings"]

CONFIG_NAMES = ("spynnaker.cfg",)
DEFAULT_SPALLOC_PORT = 22244
_NONE = ("", "none")
_FILE_KEYS = (
    "spalloc_server",
    "spalloc_port",
    "spalloc_user",
    "virtual_board",
    "spalloc_job",
    "spalloc_job_owner",
)


@dataclass(frozen=True)
class MachineSettings:
    """The machine a script runs on.

    Attributes:
        spalloc_server: host of the allocation server; None runs virtually.
        spalloc_port: its port.
        spalloc_user: owner name of the job.
        virtual_board: run in-process even if a server is named.
        spalloc_job: a job already allocated for this script, used if the network fits.
        spalloc_job_owner: the owner that job was created with.
        n_boards_required: boards to ask for at least (sPyNNaker's setup argument).
        n_chips_required: chips to ask for at least.
        sources: the configuration files that were read.
    """

    spalloc_server: str | None = None
    spalloc_port: int = DEFAULT_SPALLOC_PORT
    spalloc_user: str = "allotment"
    virtual_board: bool = False
    spalloc_job: int | None = None
    spalloc_job_owner: str | None = None
    n_boards_required: int | None = None
    n_chips_required: int | None = None
    sources: tuple[str, ...] = ()

    @property
    def is_virtual(self) -> bool:
        """Whether the network runs on the chip model in this process."""
        return self.virtual_board or self.spalloc_server is None


def _files(cwd: Path, home: Path) -> list[Path]:
    return [cwd / CONFIG_NAMES[0], home / ".spynnaker.cfg"]


def _bool(text: str, key: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off", "none", ""):
        return False
    raise NotSupportedError(f"[Machine] {key} = {text!r} in {where}", "True or False")


def read_settings(
    overrides: Mapping[str, Any],
    *,
    cwd: Path | None = None,
    home: Path | None = None,
) -> MachineSettings:
    """Read the ``[Machine]`` settings: setup()'s arguments over ./spynnaker.cfg over ~.

    Raises:
        NotSupportedError: a value that is not of its key's kind.
    """
    values: dict[str, Any] = {}
    sources: list[str] = []
    # the nearer file wins, as sPyNNaker reads them: home first, then the working directory
    for path in reversed(_files(cwd or Path.cwd(), home or Path.home())):
        if not path.is_file():
            continue
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise NotSupportedError(f"configuration file {path} ({exc})", "ini syntax") from None
        sources.append(str(path))
        if not parser.has_section("Machine"):
            continue
        section = parser["Machine"]
        for key in (*_FILE_KEYS, "machine_name"):
            if key in section:
                values[key] = (section[key], str(path))
    settings: dict[str, Any] = {"sources": tuple(sources)}
    machine_name = values.pop("machine_name", None)
    for key, (text, where) in values.items():
        if key == "spalloc_server":
            settings[key] = None if text.strip().lower() in _NONE else text.strip()
        elif key == "spalloc_port":
            try:
                settings[key] = int(text)
            except ValueError:
                raise NotSupportedError(
                    f"[Machine] spalloc_port = {text!r} in {where}", "a port number"
                ) from None
        elif key == "spalloc_job":
            try:
                settings[key] = None if text.strip().lower() in _NONE else int(text)
            except ValueError:
                raise NotSupportedError(
                    f"[Machine] spalloc_job = {text!r} in {where}", "a job id"
                ) from None
        elif key == "virtual_board":
            settings[key] = _bool(text, key, where)
        else:
            settings[key] = text.strip()
    for key in (
        "spalloc_server",
        "spalloc_port",
        "spalloc_user",
        "virtual_board",
        "n_boards_required",
        "n_chips_required",
    ):
        if overrides.get(key) is not None:
            settings[key] = overrides[key]
    machine = MachineSettings(**settings)
    if machine_name is not None and machine_name[0].strip().lower() not in _NONE:
        # sPyNNaker's board reached directly by its address: here the run would go virtual
        # without a word, unless it is meant to be virtual
        text, where = machine_name
        if not machine.virtual_board and machine.spalloc_server is None:
            raise NotSupportedError(
                f"[Machine] machine_name = {text.strip()} in {where} (a board reached directly)",
                "spalloc_server = <the allocation server> (with spalloc_port and spalloc_user),"
                " or virtual_board = True",
            )
    return machine


def describe(settings: MachineSettings) -> str:
    """One line saying where the network runs."""
    if settings.is_virtual:
        return "allotment (virtual machine, chip model in-process)"
    return f"allotment (server {settings.spalloc_server}:{settings.spalloc_port})"
