"""The command table refuses, when it is built, every way two families can disagree."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from allocator.service import CommandTable, CommandTableError
from protocol.commands import V1_SPECS, CommandSpec


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ECHO = CommandSpec("ext_echo", (), _Args, str)
OTHER = CommandSpec("ext_other", (), _Args, str)


def _echo(args: Any, conn: Any) -> str:
    return "echo"


def test_a_family_plugs_in_and_is_routed() -> None:
    table = CommandTable()
    table.add_family("ext", [ECHO, OTHER], {"ext_echo": _echo, "ext_other": _echo})
    route = table.route("ext_echo")
    assert route is not None
    assert (route.spec, route.handler, route.family) == (ECHO, _echo, "ext")
    assert table.route("nope") is None
    assert sorted(table) == ["ext_echo", "ext_other"]


@pytest.mark.parametrize(
    ("specs", "handlers", "fact"),
    [
        ([ECHO, OTHER], {"ext_echo": _echo}, "no handler for ['ext_other']"),
        ([ECHO], {"ext_echo": _echo, "ext_x": _echo}, "handlers without a spec: ['ext_x']"),
        ([ECHO, ECHO], {"ext_echo": _echo}, "lists a command twice"),
        ([ECHO], {"ext_echo": "not callable"}, "is not callable"),
    ],
)
def test_a_family_that_does_not_match_its_specs_is_refused(
    specs: list[CommandSpec], handlers: dict[str, Any], fact: str
) -> None:
    table = CommandTable()
    with pytest.raises(CommandTableError, match=fact.replace("[", r"\[").replace("]", r"\]")):
        table.add_family("ext", specs, handlers)
    assert len(table) == 0  # nothing half-added


def test_a_command_served_twice_is_refused_naming_both_families() -> None:
    version = next(spec for spec in V1_SPECS if spec.name == "version")
    table = CommandTable()
    table.add_family("v1", [version], {"version": _echo})
    with pytest.raises(CommandTableError, match=r"\['version'\] already served by \['v1'\]"):
        table.add_family("dispatch", [version], {"version": _echo})


async def test_an_extension_command_registered_with_the_protocol_plugs_in(db_url: str) -> None:
    from allocator.clock import FakeClock
    from protocol.commands import command_table, register
    from tests.allocator.service_harness import call, running_service
    from tests.allocator.test_service import FakeConnection, _config

    if "ext_plug_echo" not in command_table():  # the registry lives as long as the process
        register(CommandSpec("ext_plug_echo", (), _Args, str))

    async def echo(args: Any, conn: Any) -> str:
        async with asyncio.timeout(5):  # a handler may use the asyncio tools
            await asyncio.sleep(0)
        return "plugged"

    async with running_service(_config(), db_url, FakeClock()) as service:
        service.add_handler("ext_plug_echo", echo)
        assert await call(service, FakeConnection(), "ext_plug_echo") == "plugged"
        with pytest.raises(CommandTableError, match="already served"):
            service.add_handler("ext_plug_echo", echo)
