"""What the reporter tells MQTT of machines: added, changed, removed, drained, and boards
that leave the configuration (the service runs without sockets on a real database)."""

from __future__ import annotations

import copy
from typing import Any

from allocator.clock import FakeClock
from allocator.config import parse_config
from allocator.reporting import Reporter
from protocol.events import BoardEvent, JobEvent, MachineEvent, MachineSummary
from tests.allocator.service_harness import call, running_service, settle

TOKEN = "s3cret"
CONFIG: dict[str, Any] = {
    "server": {"seconds_before_free": 0.0, "keepalive_check_s": 1.0, "operator_token": TOKEN},
    "power": {"power_on_delay_s": 0.0, "power_off_delay_s": 0.0},
    "machines": [
        {
            "name": "small",
            "tags": ["default"],
            "width": 2,
            "height": 1,
            "board_locations": [[x, 0, z, 0, 0, 3 * x + z] for x in range(2) for z in range(3)],
        }
    ],
}


class _Sink:
    def __init__(self) -> None:
        self.machine_events: list[MachineEvent] = []
        self.boards: dict[tuple[str, int, int, int], str | None] = {}

    def publish_job(self, event: JobEvent) -> None:
        pass

    def publish_board(self, event: BoardEvent) -> None:
        self.boards[(event.machine, event.x, event.y, event.z)] = event.state

    def publish_machine(self, event: MachineEvent) -> None:
        self.machine_events.append(event)

    def publish_machine_summary(self, summary: MachineSummary) -> None:
        pass

    def forget_board(self, machine: str, x: int, y: int, z: int) -> None:
        self.boards[(machine, x, y, z)] = None

    def forget_machine(self, machine: str) -> None:
        pass

    def changes(self) -> list[tuple[str, str, str | None]]:
        found = [(e.machine, e.change.value, e.reason) for e in self.machine_events]
        self.machine_events.clear()
        return found


class _Conn:
    peer_host = "10.0.0.9"


async def test_machine_events_say_what_changed_and_only_that(db_url: str) -> None:
    # "changed" was never sent, a drain's reason was null, every start announced every
    # machine as added (and a drained one as drained again), and boards a reload removed
    # kept their retained state at the broker.
    clock = FakeClock()
    async with running_service(parse_config(CONFIG), db_url, clock) as service:
        await call(service, _Conn(), "admin_drain_machine", TOKEN, "small", "firmware update")
        await settle(service, clock)
    sink = _Sink()
    async with running_service(parse_config(CONFIG), db_url, clock) as service:
        reporter = Reporter(service, publisher=sink, min_interval_s=0.0)
        service.add_listener(reporter.on_change)
        reporter.start()
        assert sink.changes() == []  # the state it started in is no change
        assert len(sink.boards) == 6
        await call(service, _Conn(), "admin_undrain_machine", TOKEN, "small", "done")
        await settle(service, clock)
        reporter.flush()
        assert sink.changes() == [("small", "undrained", "done")]
        await call(service, _Conn(), "admin_drain_machine", TOKEN, "small", "firmware update")
        await settle(service, clock)
        reporter.flush()
        assert sink.changes() == [("small", "drained", "firmware update")]

        smaller = copy.deepcopy(CONFIG)
        machine = smaller["machines"][0]
        machine["width"] = 1
        machine["board_locations"] = machine["board_locations"][:3]
        machine["tags"] = ["default", "half"]
        service.reconfigure(parse_config(smaller))
        await settle(service, clock)
        reporter.flush()
        assert sink.changes() == [("small", "changed", None)]
        assert [k for k, state in sink.boards.items() if state is None] == [
            ("small", 1, 0, z) for z in range(3)
        ]
        other = copy.deepcopy(smaller)
        other["machines"][0]["name"] = "other"
        service.reconfigure(parse_config(other))
        await settle(service, clock)
        reporter.flush()
        assert sorted(sink.changes()) == [("other", "added", None), ("small", "removed", None)]
        assert all(state is None for (m, *_), state in sink.boards.items() if m == "small")
