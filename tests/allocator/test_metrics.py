"""The metrics registry and its HTTP endpoint, scraped over real HTTP."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from allocator.metrics import _LATENCY_BUCKETS_S, MAX_COMMAND_LABELS, Metrics
from protocol.events import BoardState


async def _http_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def _samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_scrape_reflects_jobs_coming_and_going() -> None:
    metrics = Metrics()
    async with metrics.endpoint("127.0.0.1", 0) as endpoint:
        metrics.set_board_counts("spin5", {BoardState.FREE: 1200})
        metrics.set_job_counts({})
        _, before = await _http_get(endpoint.port, "/metrics")

        metrics.set_board_counts("spin5", {BoardState.FREE: 1197, BoardState.ALLOCATED: 3})
        metrics.set_job_counts({"ready": 1})
        metrics.request_done("create_job", "ok", 0.002)
        metrics.queue_wait(4.0)
        status, during = await _http_get(endpoint.port, "/metrics")

        metrics.set_board_counts("spin5", {BoardState.FREE: 1197, BoardState.COOLING_DOWN: 3})
        metrics.set_job_counts({})
        metrics.keepalive_expired()
        _, after = await _http_get(endpoint.port, "/metrics")

    assert status == 200
    free = ("allotment_boards", frozenset({("machine", "spin5"), ("state", "free")}))
    allocated = ("allotment_boards", frozenset({("machine", "spin5"), ("state", "allocated")}))
    cooling = ("allotment_boards", frozenset({("machine", "spin5"), ("state", "cooling_down")}))
    ready = ("allotment_jobs", frozenset({("state", "ready")}))
    creates = (
        "allotment_requests_total",
        frozenset({("command", "create_job"), ("outcome", "ok")}),
    )
    expiries = ("allotment_keepalive_expiries_total", frozenset())
    b, d, a = _samples(before), _samples(during), _samples(after)
    assert (b[free], d[free], a[free]) == (1200, 1197, 1197)
    assert (b[allocated], d[allocated], a[allocated]) == (0, 3, 0)
    assert a[cooling] == 3
    # every live state has a series from the start, at zero (a dashboard sees "0 queued")
    assert (b[ready], d[ready], a[ready]) == (0, 1, 0)
    assert b[("allotment_jobs", frozenset({("state", "queued")}))] == 0
    assert creates not in b
    assert d[creates] == 1
    assert (b[expiries], a[expiries]) == (0, 1)
    assert d[("allotment_queue_wait_seconds_count", frozenset())] == 1


async def test_endpoint_refuses_other_paths_and_methods() -> None:
    metrics = Metrics()
    async with metrics.endpoint("127.0.0.1", 0) as endpoint:
        assert (await _http_get(endpoint.port, "/"))[0] == 404
        assert (await _http_get(endpoint.port, "/metrics", "POST"))[0] == 405
        status, body = await _http_get(endpoint.port, "/metrics", "HEAD")
    assert (status, body) == (200, b"")


async def test_endpoint_port_unavailable_after_close() -> None:
    endpoint = Metrics().endpoint("127.0.0.1", 0)
    async with endpoint:
        assert endpoint.port > 0
    with pytest.raises(RuntimeError, match="not listening"):
        _ = endpoint.port


def test_two_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.connection_opened()
    assert first.value("allotment_open_connections") == 1
    assert second.value("allotment_open_connections") == 0


def test_unknown_commands_do_not_grow_labels() -> None:
    known = Metrics(commands=["version"])
    known.request_done("version", "ok", 0.001)
    known.request_done("no_such_command", "exception", 0.001)
    assert known.value("allotment_requests_total", {"command": "other", "outcome": "exception"})

    capped = Metrics()
    for i in range(MAX_COMMAND_LABELS + 5):
        capped.request_done(f"cmd{i}", "exception", 0.001)
    assert (
        capped.value("allotment_requests_total", {"command": "other", "outcome": "exception"}) == 5
    )


def test_connections_power_and_mqtt_counters() -> None:
    metrics = Metrics()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    metrics.power_transition("on", n_boards=3)
    metrics.notification_sent("jobs_changed")
    metrics.commit_latency(0.004)
    metrics.mqtt_dropped("queue_full", 2)
    metrics.mqtt_connected(False)
    assert metrics.value("allotment_open_connections") == 1
    assert metrics.value("allotment_connections_total") == 2
    assert metrics.value("allotment_power_transitions_total", {"kind": "on"}) == 3
    assert metrics.value("allotment_notifications_sent_total", {"kind": "jobs_changed"}) == 1
    assert metrics.value("allotment_db_commit_duration_seconds_count") == 1
    assert metrics.value("allotment_mqtt_events_dropped_total", {"reason": "queue_full"}) == 2
    assert metrics.value("allotment_mqtt_connect_failures_total") == 1


def test_removed_machine_disappears() -> None:
    metrics = Metrics()
    metrics.set_board_counts("gone", {BoardState.FREE: 3})
    metrics.remove_machine("gone")
    assert metrics.value("allotment_boards", {"machine": "gone", "state": "free"}) is None


def test_request_metrics_expose_what_prometheus_client_would() -> None:
    # The server's request metrics (label children cached, unknown commands folded into
    # "other") must expose what a plain Counter and Histogram fed the same requests would,
    # timestamps aside.
    registry = CollectorRegistry()
    counter = Counter(
        "allotment_requests",
        "Requests answered, by command and outcome.",
        ["command", "outcome"],
        registry=registry,
    )
    histogram = Histogram(
        "allotment_request_duration_seconds",
        "Time from reading a request to writing its reply, by command and outcome.",
        ["command", "outcome"],
        buckets=_LATENCY_BUCKETS_S,
        registry=registry,
    )
    metrics = Metrics(commands=["version", "create_job"])
    requests = [
        ("version", "ok", 0.0),
        ("version", "ok", 0.0005),  # on a bound: counted in that bucket
        ("version", "ok", 0.00051),
        ("create_job", "ok", 0.003),
        ("create_job", "exception", 10.0),
        ("create_job", "exception", 11.0),  # above every bound: +Inf only
        ("nonsense", "exception", 0.001),  # recorded as "other"
        ("version", "ok", 2.5),
    ]
    for command, outcome, seconds in requests:
        metrics.request_done(command, outcome, seconds)
        label = command if command in ("version", "create_job") else "other"
        counter.labels(label, outcome).inc()
        histogram.labels(label, outcome).observe(seconds)

    def request_lines(exposition: bytes) -> list[str]:
        lines = []
        for line in exposition.decode().splitlines():
            if "allotment_request" not in line:
                continue
            if "_created{" in line:
                line = line.rsplit(" ", 1)[0]  # a creation time, different in each
            lines.append(line)
        return lines

    expected = request_lines(generate_latest(registry))
    assert len(expected) > 30
    assert request_lines(metrics.exposition()) == expected
    le_0005 = {"command": "version", "outcome": "ok", "le": "0.0005"}
    assert metrics.value("allotment_request_duration_seconds_bucket", le_0005) == 2
