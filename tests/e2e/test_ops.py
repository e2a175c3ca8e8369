"""Operations end to end against a real server process: metrics, MQTT events, operator CLI.

The server runs the 1,200-board machine with zero power delays. Metrics are scraped over
HTTP; events are read from the real Mosquitto (`ALLOTMENT_TEST_MQTT`); the operator
subcommands run through `allocator.cli.main` as a user would type them.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from allocator.cli import main
from tests.e2e.conftest import SERVER_TOML, RawClient, ServerProcess

TOKEN = "op-token-1"
METRICS_AT = re.compile(r"metrics endpoint at http://127\.0\.0\.1:(\d+)/metrics")
WAIT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(mqtt: str = "") -> str:
    """The server's configuration; its metrics endpoint on any free port."""
    text = (
        SERVER_TOML.replace("[server]\n", f'[server]\noperator_token = "{TOKEN}"\n')
        + '\n[metrics]\naddress = "127.0.0.1"\nport = "any"\n'
    )
    return text + mqtt


def metrics_port(server: ServerProcess) -> int:
    """The port the server's metrics endpoint bound, from the line it logs before ready."""
    found = METRICS_AT.search(server.stderr_text)
    assert found is not None, f"no metrics endpoint line; stderr:\n{server.stderr_text}"
    return int(found.group(1))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition (the reporter coalesces updates) until it holds, or fail."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def ops_server(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, int]:
    server = start_server(config_text=_config())
    return server, metrics_port(server)


@pytest.fixture
def client(ops_server: tuple[ServerProcess, int]) -> Iterator[RawClient]:
    server, _ = ops_server
    raw = RawClient(server.host, server.port)
    yield raw
    raw.close()


def test_metrics_follow_jobs_as_they_come_and_go(
    ops_server: tuple[ServerProcess, int], client: RawClient
) -> None:
    server, port = ops_server
    assert f"metrics endpoint at http://127.0.0.1:{port}/metrics" in server.stderr_text
    machine = "spinn-1200"

    def boards(state: str) -> float:
        return sample(port, "allotment_boards", machine=machine, state=state)

    wait_for(lambda: boards("free") > 0, "the first board counts")
    free_before = boards("free")
    assert free_before + boards("dead") == 1200
    job_id = client.call("create_job", 2, 1, owner="metrics")
    client.wait_for_state(job_id, 3)
    wait_for(lambda: boards("allocated") == 6, "6 allocated boards")
    assert boards("free") == free_before - 6
    assert sample(port, "allotment_jobs", state="ready") == 1
    assert sample(port, "allotment_queue_wait_seconds_count") == 1
    assert sample(port, "allotment_requests_total", command="create_job", outcome="ok") == 1
    assert sample(port, "allotment_power_transitions_total", kind="on") == 6
    assert sample(port, "allotment_db_commit_duration_seconds_count") > 0
    assert sample(port, "allotment_open_connections") >= 1
    client.call("destroy_job", job_id, "done")
    wait_for(lambda: boards("allocated") == 0 and boards("free") == free_before, "boards freed")
    assert sample(port, "allotment_jobs", state="ready") == 0
    with pytest.raises(AssertionError):
        client.call("no_such_command")
    assert sample(port, "allotment_requests_total", command="other", outcome="exception") == 1


def test_keepalive_expiry_is_counted(
    ops_server: tuple[ServerProcess, int], client: RawClient
) -> None:
    _, port = ops_server
    job_id = client.call("create_job", owner="expiring", keepalive=0.2)
    wait_for(lambda: sample(port, "allotment_keepalive_expiries_total") == 1, "a keepalive expiry")
    assert client.call("get_job_state", job_id)["state"] == 4


def _cli(capsys: pytest.CaptureFixture[str], server: ServerProcess, *argv: object) -> str:
    code = main([*map(str, argv), "--host", server.host, "--port", str(server.port)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_operator_commands_against_a_running_server(
    ops_server: tuple[ServerProcess, int],
    client: RawClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = ops_server
    monkeypatch.setenv("ALLOTMENT_OPERATOR_TOKEN", TOKEN)
    monkeypatch.setenv("NO_COLOR", "1")
    machine = "spinn-1200"
    job_id = client.call("create_job", 1, 1, owner="alice")
    client.wait_for_state(job_id, 3)

    out = _cli(capsys, server, "board", "out", machine, 5, 5, 1, "--reason", "fan failed",
               "--operator", "carol")  # fmt: skip
    assert "carol@" in out
    assert "board (5, 5, 1) out of service: fan failed" in out
    out = _cli(capsys, server, "link", "out", machine, 6, 6, 0, "NE", "--reason", "cable")
    assert "link NORTH_EAST out of service: cable" in out
    wait_for(
        lambda: sample(port, "allotment_boards", machine=machine, state="out_of_service") == 1,
        "an out-of-service board in the metrics",
    )

    text_map = _cli(capsys, server, "map", machine)
    assert "#" in text_map
    assert "A" in text_map
    assert "X" in text_map
    png = tmp_path / "map.png"
    out = _cli(capsys, server, "map", machine, "--png", str(png))
    assert str(png) in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = _cli(capsys, server, "ps")
    assert "alice" in out
    assert str(job_id) in out
    out = _cli(capsys, server, "where-is", "--board", machine, 5, 5, 1)
    assert "Board coordinate: (5, 5, 1)" in out

    out = _cli(capsys, server, "drain", machine, "--reason", "firmware")
    queued = client.call("create_job", owner="waits")
    assert client.call("get_job_state", queued)["state"] == 1
    out = _cli(capsys, server, "undrain", machine, "--reason", "firmware done")
    client.wait_for_state(queued, 3)

    out = _cli(capsys, server, "destroy", str(job_id), "--reason", "runaway")
    assert f"job {job_id} of alice: runaway" in out
    state = client.call("get_job_state", job_id)
    assert (state["state"], state["reason"]) == (4, "runaway")

    out = _cli(capsys, server, "audit", "--limit", "10")
    lines = out.splitlines()
    assert len(lines) == 5
    assert "admin_destroy_job" in lines[0]
    assert "admin_set_board_service" in lines[-1]
    assert sample(port, "allotment_admin_actions_total", action="admin_drain_machine") == 1

    # The token is checked: a wrong one is refused, nothing recorded.
    code = main(["drain", machine, "--reason", "x", "--token", "wrong",
                 "--host", server.host, "--port", str(server.port)])  # fmt: skip
    assert code == 1
    assert "needs a valid operator token" in capsys.readouterr().err

    # Out-of-service state and the audit log survive a restart.
    server.stop()
    again = server.restarted()
    try:
        out = _cli(capsys, again, "audit", "--limit", "1")
        assert "admin_destroy_job" in out
        text_map = _cli(capsys, again, "map", machine)
        assert "#" in text_map
    finally:
        again.stop()


async def _collect(
    broker: Any,
    prefix: str,
    until: Callable[[list[tuple[str, Any]]], bool],
    caught_up: asyncio.Event | None = None,
) -> list[tuple[str, Any]]:
    """Subscribe to every topic under `prefix` and gather messages until `until(seen)`.

    `caught_up` is set once the subscription is live and the retained messages it brought
    have all arrived: a marker published right after the SUBACK comes back behind them.
    """
    seen: list[tuple[str, Any]] = []
    marker = f"{prefix}/test-marker/{uuid.uuid4().hex}"
    async with aiomqtt.Client(broker.host, broker.port) as sub, asyncio.timeout(WAIT_S):
        # QoS 0 down to this client: the broker queues a bounded number of QoS 1
        # messages per client and drops the rest, and the retained ones alone (a message
        # per board) fill that queue; on loopback TCP QoS 0 loses nothing.
        await sub.subscribe(f"{prefix}/#", qos=0)
        await sub.publish(marker, b"caught up", qos=1)
        async for message in sub.messages:
            if str(message.topic) == marker:
                if caught_up is not None:
                    caught_up.set()
                continue
            payload = bytes(message.payload)
            try:
                body = json.loads(payload)
            except ValueError:
                body = payload.decode()
            seen.append((str(message.topic), body))
            if until(seen):
                return seen
    return seen


async def _caught_up(collector: asyncio.Task[Any], caught_up: asyncio.Event) -> None:
    """Return once `caught_up` is set; raise what the collector raised if it ended first."""
    waiter = asyncio.create_task(caught_up.wait())
    try:
        await asyncio.wait([collector, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not caught_up.is_set():
        collector.result()  # raises what ended it
        raise AssertionError("the MQTT collector ended before its subscription caught up")


async def test_mqtt_events_for_jobs_boards_and_a_retained_summary(
    start_server: Callable[..., ServerProcess], mqtt_broker: Any
) -> None:
    prefix = f"allotment-test-{uuid.uuid4().hex[:8]}"
    mqtt = f'\n[mqtt]\nurl = "mqtt://{mqtt_broker.host}:{mqtt_broker.port}"\n'
    mqtt += f'topic_prefix = "{prefix}"\n'
    server = await asyncio.to_thread(start_server, config_text=_config(mqtt))
    machine = "spinn-1200"

    def has_summary(seen: list[tuple[str, Any]]) -> bool:
        return any(t == f"{prefix}/{machine}/summary" for t, _ in seen)

    # Connecting late still shows the present state (retained).
    seen = await _collect(mqtt_broker, prefix, has_summary)
    summary = next(b for t, b in seen if t.endswith("/summary"))
    assert summary["kind"] == "summary"
    assert summary["n_boards"] == 1200
    assert summary["n_boards_by_state"]["allocated"] == 0

    # Board states are reported at most once per interval, coalesced: a job created and
    # destroyed inside one interval may never show its boards as allocated. So the job is
    # destroyed only once its board has been seen allocated (an explicit sync point).
    created: list[int] = []

    def create() -> int:
        raw = RawClient(server.host, server.port)
        try:
            job_id: int = raw.call("create_job", 1, 1, owner="mqtt")
            created.append(job_id)
            raw.wait_for_state(job_id, 3)
            return job_id
        finally:
            raw.close()

    def destroy(job_id: int) -> None:
        raw = RawClient(server.host, server.port)
        try:
            raw.call("destroy_job", job_id, "finished")
        finally:
            raw.close()

    def board_held(seen: list[tuple[str, Any]]) -> bool:
        return bool(created) and any(
            f"/{machine}/boards/" in t
            and b["state"] in ("allocated", "powering")
            and b["job_id"] == created[0]
            for t, b in seen
        )

    def destroyed_seen(seen: list[tuple[str, Any]]) -> bool:
        return any(
            isinstance(b, dict) and b.get("kind") == "job" and b.get("state") == 4 for _, b in seen
        )

    caught_up = asyncio.Event()
    collector = asyncio.create_task(_collect(mqtt_broker, prefix, board_held, caught_up))
    await _caught_up(collector, caught_up)  # subscribed, and the retained messages are in
    job_id = await asyncio.to_thread(create)
    seen = await collector  # its board was reported held by the job
    caught_up = asyncio.Event()
    collector = asyncio.create_task(_collect(mqtt_broker, prefix, destroyed_seen, caught_up))
    await _caught_up(collector, caught_up)
    await asyncio.to_thread(destroy, job_id)
    seen += await collector
    job_events = [b for t, b in seen if t.startswith(f"{prefix}/") and "/jobs/" in t]
    states = [e["state"] for e in job_events if e["job_id"] == job_id]
    assert 3 in states
    assert states[-1] == 4
    destroyed = next(e for e in job_events if e["state"] == 4)
    assert destroyed["reason"] == "finished"
    assert destroyed["machine"] == machine

    def summary_idle(seen: list[tuple[str, Any]]) -> bool:
        return any(
            t.endswith("/summary")
            and b["n_boards_by_state"]["allocated"] == 0
            and b["n_boards_by_state"]["cooling_down"] == 0
            for t, b in seen
        )

    await _collect(mqtt_broker, prefix, summary_idle)
    await asyncio.to_thread(server.stop)


def test_a_broker_that_is_down_never_holds_up_allocation_and_drops_are_counted(
    start_server: Callable[..., ServerProcess],
) -> None:
    dead_port = _free_port()  # nothing listens there
    mqtt = f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{dead_port}"\nqueue_size = 5\n'
    server = start_server(config_text=_config(mqtt))
    port = metrics_port(server)
    raw = RawClient(server.host, server.port)
    try:
        for _ in range(10):
            job_id = raw.call("create_job", owner="no-broker")
            raw.wait_for_state(job_id, 3)
            raw.call("destroy_job", job_id, "done")
    finally:
        raw.close()
    wait_for(
        lambda: sample(port, "allotment_mqtt_events_dropped_total", reason="queue_full") > 0,
        "dropped events",
    )
    assert sample(port, "allotment_mqtt_connected") == 0
    assert sample(port, "allotment_mqtt_queue_length") <= 5
