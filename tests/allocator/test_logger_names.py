"""Every logger of the server is named `allotment.*`, so an operator filters on one prefix."""

from __future__ import annotations

import re
from pathlib import Path

import allocator

_GET_LOGGER = re.compile(r"getLogger\(([^)]*)\)")


def test_every_logger_is_named_allotment_something() -> None:
    root = Path(allocator.__file__).parent
    names = {
        (path.relative_to(root).as_posix(), match.group(1))
        for path in root.rglob("*.py")
        for match in _GET_LOGGER.finditer(path.read_text())
    }
    assert names, "no loggers found: the pattern is stale"
    bad = sorted(
        (path, name) for path, name in names if not re.fullmatch(r'"allotment(\.\w+)*"', name)
    )
    assert bad == []
