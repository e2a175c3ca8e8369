"""The command table: one explicit mapping from command spec to handler, checked when built.

Each command family (v1, operator, dispatch, ...) hands over its specs and its handlers by
name; the table refuses a spec without a handler, a handler without a spec, and a name
served twice, so a mistake stops the server at start-up rather than at the first request::

    table = CommandTable()
    table.add_family("v1", V1_SPECS, v1.handlers())
    table.add_family("operator", ADMIN_SPECS, operator.handlers())
    table.route("create_job")  # -> Route(spec, handler), or None for an unknown command

A handler is called with the bound arguments and the connection; it returns the reply, or
an awaitable of it (a coroutine), which the server runs in a task of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from allocator.errors import AllocatorError
from protocol.commands import CommandSpec

__all__ = ["CommandTable", "CommandTableError", "Handler", "Route"]

Handler = Callable[[Any, Any], Any]
"""``handler(arguments, connection)`` -> the reply, or an awaitable of it."""


class CommandTableError(AllocatorError):
    """The command table is inconsistent (a bug in how the families were put together)."""


@dataclass(frozen=True, slots=True)
class Route:
    """How one command is served: its spec (to bind the arguments) and its handler."""

    spec: CommandSpec
    handler: Handler
    family: str


class CommandTable:
    """Command name -> `Route`, built family by family; read by the server per request."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def __repr__(self) -> str:
        families = sorted({route.family for route in self._routes.values()})
        return f"<CommandTable commands={len(self._routes)} families={families}>"

    def add_family(
        self, family: str, specs: Iterable[CommandSpec], handlers: Mapping[str, Handler]
    ) -> None:
        """Serve every command of `specs` with the handler of the same name.

        Raises:
            CommandTableError: a spec has no handler, a handler no spec, or a command is
                already served (nothing is added then).
        """
        specs = tuple(specs)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise CommandTableError(f"family {family!r} lists a command twice: {names}")
        missing = sorted(set(names) - set(handlers))
        if missing:
            raise CommandTableError(f"family {family!r} has no handler for {missing}")
        extra = sorted(set(handlers) - set(names))
        if extra:
            raise CommandTableError(f"family {family!r} has handlers without a spec: {extra}")
        taken = sorted(name for name in names if name in self._routes)
        if taken:
            owners = sorted({self._routes[name].family for name in taken})
            raise CommandTableError(f"family {family!r}: {taken} already served by {owners}")
        uncallable = sorted(name for name in names if not callable(handlers[name]))
        if uncallable:
            raise CommandTableError(f"family {family!r}: handler of {uncallable} is not callable")
        for spec in specs:
            self._routes[spec.name] = Route(spec, handlers[spec.name], family)

    def route(self, command: str) -> Route | None:
        """How a command is served, or None for a command nobody serves."""
        return self._routes.get(command)

    def __contains__(self, command: object) -> bool:
        return command in self._routes

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)
