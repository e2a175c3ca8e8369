"""The server process in-process: a database that stays down ends it with status 3.

The policy: a failing commit is retried with backoff for `database_retry_s`; requests wait
meanwhile; then every waiting and later request is refused with "database unavailable, try
again" (no SQL, no parameters), the process logs one line saying why and exits 3, and its
supervisor restarts it from the durable state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from allocator.app import EXIT_DATABASE_UNAVAILABLE, serve
from tests.allocator.faulty_database import SECRET_PARAMETER, Faults

CONFIG = """\
[server]
database_retry_s = 0.3

[power]
power_on_delay_s = 0.0
power_off_delay_s = 0.0

[[machines]]
name = "one"
single_board = { bmp_ip = "10.9.0.0", spinnaker_ip = "10.9.0.1" }
"""


class _Ready(logging.Handler):
    """Resolves a future with the port when the server logs where it listens."""

    def __init__(self, future: asyncio.Future[int]) -> None:
        super().__init__()
        self.future = future

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "listening on" in message and not self.future.done():
            self.future.set_result(int(message.split("listening on ")[1].split()[0].split(":")[-1]))


async def _call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: str, **kwargs: object
) -> dict[str, object]:
    writer.write(json.dumps({"command": command, "args": [], "kwargs": kwargs}).encode() + b"\n")
    reply: dict[str, object] = json.loads(await reader.readline())
    return reply


async def test_a_database_that_stays_down_ends_the_server_with_status_3(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "allotment.toml"
    config.write_text(CONFIG)
    caplog.set_level(logging.INFO, logger="allotment")
    faults = Faults()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    handler = _Ready(ready)
    logging.getLogger("allotment").addHandler(handler)
    try:
        server = asyncio.create_task(
            serve(
                host="127.0.0.1",
                port=0,
                config_path=config,
                db_url=db_url,
                wrap_database=faults.wrap,
            )
        )
        port = await asyncio.wait_for(ready, 30)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        created = await _call(reader, writer, "create_job", owner="alice")
        assert isinstance(created.get("return"), int), created
        faults.db.is_down = True
        refused = await _call(reader, writer, "create_job", owner="bob")
        assert refused == {"exception": "database unavailable, try again"}
        assert SECRET_PARAMETER not in json.dumps(refused)
        status = await asyncio.wait_for(server, 30)
        writer.close()
    finally:
        logging.getLogger("allotment").removeHandler(handler)
    assert status == EXIT_DATABASE_UNAVAILABLE
    last = [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert len(last) == 1
    assert "exiting with status 3" in last[0].getMessage()
    assert "disk I/O error" in last[0].getMessage()
