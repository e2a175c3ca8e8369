"""Prometheus metrics of one allocation server and the HTTP endpoint that serves them.

`Metrics` owns its own `CollectorRegistry` (never the process-wide one), so several servers
can live in one process. The service calls its methods as things happen; `Metrics.endpoint`
serves `/metrics` from the event loop (no thread of its own)::

    metrics = Metrics()
    async with metrics.endpoint("127.0.0.1", 9464) as endpoint:
        ...                      # endpoint.port is the bound port (useful with port 0)

Every name follows the Prometheus conventions: prefix `allotment_`, base units (seconds),
`_total` on counters. Label values that come from clients (command names) are capped, so a
client sending random command names cannot grow the registry without bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from protocol.events import BoardState

__all__ = ["MAX_COMMAND_LABELS", "Metrics", "MetricsEndpoint"]

_log = logging.getLogger("allotment.metrics")

MAX_COMMAND_LABELS: Final = 64
"""Distinct command label values kept; later unknown names are counted as `other`."""

_LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_WAIT_BUCKETS_S: Final = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)
_MAX_REQUEST_HEAD_BYTES: Final = 8192
_REQUEST_READ_TIMEOUT_S: Final = 10.0


_REQUESTS_HELP: Final = "Requests answered, by command and outcome."
_REQUEST_DURATION_HELP: Final = (
    "Time from reading a request to writing its reply, by command and outcome."
)


@dataclass(slots=True)
class _Tally:
    """The requests of one (command, outcome): a count per latency bucket (+Inf last)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(_LATENCY_BUCKETS_S) + 1))
    sum_s: float = 0.0
    created_s: float = field(default_factory=time.time)


class _RequestStats:
    """A collector of `allotment_requests_total` and `allotment_request_duration_seconds`.

    Exposes exactly what a `Counter` and a `Histogram` with labels (command, outcome) fed
    the same requests would, creation times included; the server adds to plain numbers
    (`_Tally`) instead, without the lock and the bucket walk of a histogram's observe.
    """

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def __repr__(self) -> str:
        return f"<_RequestStats series={len(self._tallies)}>"

    def tally(self, command: str, outcome: str) -> _Tally:
        """The tally of one (command, outcome), made on first use."""
        found = self._tallies.get((command, outcome))
        if found is None:
            found = self._tallies[(command, outcome)] = _Tally()
        return found

    def collect(self) -> Iterator[Metric]:
        requests = Metric("allotment_requests", _REQUESTS_HELP, "counter")
        duration = Metric("allotment_request_duration_seconds", _REQUEST_DURATION_HELP, "histogram")
        bounds = [*map(floatToGoString, _LATENCY_BUCKETS_S), "+Inf"]
        for (command, outcome), tally in list(self._tallies.items()):
            labels = {"command": command, "outcome": outcome}
            n = sum(tally.counts)
            requests.add_sample("allotment_requests_total", labels, float(n))
            requests.add_sample("allotment_requests_created", labels, tally.created_s)
            cumulative = 0
            for bound, count in zip(bounds, tally.counts, strict=True):
                cumulative += count
                duration.add_sample(
                    "allotment_request_duration_seconds_bucket",
                    {**labels, "le": bound},
                    float(cumulative),
                )
            duration.add_sample("allotment_request_duration_seconds_count", labels, float(n))
            duration.add_sample("allotment_request_duration_seconds_sum", labels, tally.sum_s)
            duration.add_sample(
                "allotment_request_duration_seconds_created", labels, tally.created_s
            )
        yield requests
        yield duration


class Metrics:
    """The metrics of one server, in a registry of its own.

    Args:
        commands: the command names the server knows; any other name is recorded as
            `other`. Without it the first `MAX_COMMAND_LABELS` names seen are kept.
    """

    def __init__(self, commands: Iterable[str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._known_commands: set[str] | None = None if commands is None else set(commands)
        self._seen_commands: set[str] = set()
        # every live state reads zero from the start, not only once a job has been in it
        self._job_states: set[str] = {"queued", "power", "ready"}
        self._request_tallies: dict[tuple[str, str], _Tally] = {}
        r = self.registry
        self._boards = Gauge(
            "allotment_boards", "Boards by machine and state.", ["machine", "state"], registry=r
        )
        self._jobs = Gauge("allotment_jobs", "Live jobs by state.", ["state"], registry=r)
        for state in self._job_states:
            self._jobs.labels(state).set(0)
        self._queue_length = Gauge("allotment_queue_length", "Jobs waiting for boards.", registry=r)
        self._queue_wait = Histogram(
            "allotment_queue_wait_seconds",
            "Time from job creation to allocation.",
            buckets=_WAIT_BUCKETS_S,
            registry=r,
        )
        # Counted in plain numbers as requests are answered, exposed as a counter and a
        # histogram when collected (`_RequestStats`): a request costs no metric locks.
        self._request_stats = _RequestStats()
        r.register(self._request_stats)
        self._keepalive_expiries = Counter(
            "allotment_keepalive_expiries",
            "Jobs destroyed because their keepalive expired.",
            registry=r,
        )
        self._power_transitions = Counter(
            "allotment_power_transitions",
            "Board power transitions, by kind (on, off).",
            ["kind"],
            registry=r,
        )
        # One child per kind, looked up once: a label lookup per power request cost ~2 %
        # of the server's time under load.
        self._power_by_kind = {kind: self._power_transitions.labels(kind) for kind in ("on", "off")}
        self._commit_latency = Histogram(
            "allotment_db_commit_duration_seconds",
            "Time to commit one database transaction.",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self._open_connections = Gauge(
            "allotment_open_connections", "Client connections open now.", registry=r
        )
        self._connections = Counter(
            "allotment_connections", "Client connections accepted.", registry=r
        )
        self._notifications = Counter(
            "allotment_notifications_sent",
            "Notifications written to clients, by kind (jobs_changed, machines_changed).",
            ["kind"],
            registry=r,
        )
        self._admin_actions = Counter(
            "allotment_admin_actions",
            "Operator actions carried out, by action.",
            ["action"],
            registry=r,
        )
        self._mqtt_published = Counter(
            "allotment_mqtt_events_published", "Events delivered to the MQTT broker.", registry=r
        )
        self._mqtt_dropped = Counter(
            "allotment_mqtt_events_dropped",
            "Events never delivered to the MQTT broker, by reason.",
            ["reason"],
            registry=r,
        )
        self._mqtt_queue = Gauge(
            "allotment_mqtt_queue_length", "Events waiting for the MQTT broker.", registry=r
        )
        self._mqtt_connected = Gauge(
            "allotment_mqtt_connected", "1 while connected to the MQTT broker.", registry=r
        )
        self._mqtt_connect_failures = Counter(
            "allotment_mqtt_connect_failures",
            "Failed or lost connections to the MQTT broker.",
            registry=r,
        )

    def __repr__(self) -> str:
        return f"<Metrics commands={len(self._seen_commands)}>"

    def _command_label(self, command: str) -> str:
        if self._known_commands is not None:
            return command if command in self._known_commands else "other"
        if command in self._seen_commands:
            return command
        if len(self._seen_commands) >= MAX_COMMAND_LABELS:
            return "other"
        self._seen_commands.add(command)
        return command

    # The service's calls, grouped by subject.

    def request_done(self, command: str, outcome: str, seconds: float) -> None:
        """Record one answered request.

        Args:
            command: the command name as sent.
            outcome: `ok`, `exception` (an error reply) or `error` (a bug, answered
                generically).
            seconds: time from reading the request to writing the reply.
        """
        tally = self._request_tallies.get((command, outcome))
        if tally is None:
            tally = self._request_stats.tally(self._command_label(command), outcome)
            if len(self._request_tallies) < 4 * MAX_COMMAND_LABELS:
                self._request_tallies[(command, outcome)] = tally
        # The bucket a duration falls in: the first bound it does not exceed (+Inf last).
        tally.counts[bisect.bisect_left(_LATENCY_BUCKETS_S, seconds)] += 1
        tally.sum_s += seconds

    def set_board_counts(self, machine: str, counts_by_state: Mapping[BoardState, int]) -> None:
        """Set how many boards of `machine` are in each state; missing states read zero."""
        for state in BoardState:
            self._boards.labels(machine, state.value).set(counts_by_state.get(state, 0))

    def remove_machine(self, machine: str) -> None:
        """Forget the board counts of a machine that left the configuration."""
        for state in BoardState:
            with contextlib.suppress(KeyError):
                self._boards.remove(machine, state.value)

    def set_job_counts(self, counts_by_state: Mapping[str, int]) -> None:
        """Set how many live jobs are in each state (`queued`, `power`, `ready`, ...).

        A state missing reads zero (`queued`, `power` and `ready` are always there).
        """
        self._job_states.update(counts_by_state)
        for state in self._job_states:
            self._jobs.labels(state).set(counts_by_state.get(state, 0))

    def set_queue_length(self, n_jobs: int) -> None:
        """Set how many jobs wait for boards."""
        self._queue_length.set(n_jobs)

    def queue_wait(self, seconds: float) -> None:
        """Record how long a job waited between creation and allocation."""
        self._queue_wait.observe(seconds)

    def keepalive_expired(self) -> None:
        """Record a job destroyed because its keepalive expired."""
        self._keepalive_expiries.inc()

    def power_transition(self, kind: str, n_boards: int = 1) -> None:
        """Record `n_boards` boards switched on or off (`kind` is `on` or `off`)."""
        child = self._power_by_kind.get(kind)
        if child is None:
            child = self._power_by_kind[kind] = self._power_transitions.labels(kind)
        child.inc(n_boards)

    def commit_latency(self, seconds: float) -> None:
        """Record the time one database commit took."""
        self._commit_latency.observe(seconds)

    def connection_opened(self) -> None:
        """Record a client connection accepted."""
        self._connections.inc()
        self._open_connections.inc()

    def connection_closed(self) -> None:
        """Record a client connection closed."""
        self._open_connections.dec()

    def notification_sent(self, kind: str) -> None:
        """Record a notification written to a client (`jobs_changed`, `machines_changed`)."""
        self._notifications.labels(kind).inc()

    def admin_action(self, action: str) -> None:
        """Record an operator action carried out (the admin command name)."""
        self._admin_actions.labels(action).inc()

    def mqtt_published(self, n_events: int = 1) -> None:
        """Record events delivered to the MQTT broker."""
        self._mqtt_published.inc(n_events)

    def mqtt_dropped(self, reason: str, n_events: int = 1) -> None:
        """Record events that will never reach the broker (`queue_full`, `too_large`, ...)."""
        self._mqtt_dropped.labels(reason).inc(n_events)

    def mqtt_queue_length(self, n_events: int) -> None:
        """Set how many events wait for the broker."""
        self._mqtt_queue.set(n_events)

    def mqtt_connected(self, is_connected: bool) -> None:
        """Record whether the MQTT connection is up; down (a connection lost, or one that
        could not be made) counts a failure."""
        if not is_connected:
            self._mqtt_connect_failures.inc()
        self._mqtt_connected.set(1 if is_connected else 0)

    # Reading back (tests, the operator CLI).

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Return the current value of one sample (e.g. `allotment_requests_total`), if any."""
        return self.registry.get_sample_value(name, dict(labels or {}))

    def exposition(self) -> bytes:
        """Return the registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def endpoint(self, address: str = "127.0.0.1", port: int = 9464) -> MetricsEndpoint:
        """Return the HTTP endpoint serving this registry; enter it to start listening.

        Args:
            address: the address to bind; loopback by default.
            port: the TCP port; 0 binds an ephemeral port (read it from `.port`). A
                configuration that disables metrics must not call this at all.
        """
        return MetricsEndpoint(self, address, port)


class MetricsEndpoint:
    """A minimal HTTP/1.1 server answering `GET /metrics`, run on the event loop.

    Each connection gets one reply and is closed. Anything but `GET` or `HEAD` of
    `/metrics` is answered 404/405; a request head over 8 KiB or slower than 10 s is dropped.
    """

    def __init__(self, metrics: Metrics, address: str, port: int) -> None:
        self._metrics = metrics
        self._address = address
        self._port = port
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        port = self.port if self._server is not None else self._port
        state = "listening" if self._server is not None else "closed"
        return f"<MetricsEndpoint {self._address}:{port} {state}>"

    @property
    def port(self) -> int:
        """The bound port; only while listening."""
        if self._server is None:
            raise RuntimeError("metrics endpoint is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._handle, self._address, self._port, limit=_MAX_REQUEST_HEAD_BYTES
        )
        _log.info("metrics endpoint at http://%s:%d/metrics", self._address, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = self._answer(head)
            content_type = CONTENT_TYPE_LATEST if status.startswith("200") else "text/plain"
            headers = (
                f"HTTP/1.1 {status}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(headers.encode("ascii"))
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass  # a slow, oversized or vanished scraper gets nothing; the next scrape retries
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, bytes]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return "400 Bad Request", b"bad request line\n"
        method, target, _ = parts
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", b"only /metrics is served here\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"only GET and HEAD\n"
        return "200 OK", self._metrics.exposition()
