"""Publishes job, board and machine events to an MQTT broker without ever holding up the service.

The service calls the `publish_*` methods synchronously; they only append to a bounded queue
and return. `EventPublisher.run`, a task in the server's task group, owns the connection:
it connects, drains the queue, and on any broker failure reconnects with exponential backoff
and jitter. When the queue is full the oldest event is dropped (newer state matters more)
and counted in the metrics::

    publish_job() ---> [ bounded deque, drop oldest ] ---> run(): publish qos 1 ---> broker
    publish_machine_summary() ---> { latest per machine } --/  (retained, re-sent after
                                                                every reconnect, never dropped)

The retained summary of each machine is kept aside from the queue, coalesced to the latest,
and re-published after every reconnect, so a dashboard that subscribes late (or after a
broker restart that lost its retained store) still sees the present state. A retained
`<prefix>/status` reads `online` while connected and, through the MQTT will, `offline`
otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple, NoReturn
from urllib.parse import unquote, urlsplit

import aiomqtt

from allocator.errors import ConfigError
from allocator.metrics import Metrics
from protocol.events import (
    BoardEvent,
    JobEvent,
    MachineEvent,
    MachineSummary,
    RunEvent,
    board_topic,
    job_topic,
    machine_topic,
    run_topic,
    summary_topic,
)

__all__ = ["BrokerAddress", "EventPublisher", "parse_broker_url"]

_log = logging.getLogger("allotment.events")

_PUBLISH_TIMEOUT_S: Final = 10.0
_QOS: Final = 1


class BrokerAddress(NamedTuple):
    """Where and how to reach the broker, parsed from an `mqtt://` or `mqtts://` URL."""

    host: str
    port: int
    is_tls: bool
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse `mqtt[s]://[user[:password]@]host[:port]`.

    The port defaults to 1883, or 8883 for `mqtts`. User and password are percent-decoded.

    Raises:
        ConfigError: the scheme is not mqtt/mqtts, the host is missing or the port is bad;
            the server refuses to start with it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"mqtt url {url!r} has scheme {parts.scheme!r}; expected mqtt or mqtts")
    if not parts.hostname:
        raise ConfigError(f"mqtt url {url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"mqtt url {url!r} has a bad port") from None
    is_tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else (8883 if is_tls else 1883),
        is_tls=is_tls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class _Message(NamedTuple):
    topic: str
    payload: bytes
    is_retained: bool


class EventPublisher:
    """Queues events and publishes them from `run`; publishing never blocks the caller.

    Args:
        url: `mqtt://` or `mqtts://` URL of the broker, with credentials if needed.
        topic_prefix: the first level of every topic.
        queue_size: the most events held while the broker is slow or away.
        metrics: where drops, deliveries and the connection state are counted.
        tls_context: for `mqtts`, the TLS settings (a private CA, client certificates);
            the system's default trust store otherwise.
        backoff_initial_s: the first reconnection delay; doubled on each failure.
        backoff_max_s: the longest reconnection delay.
        sleep: waits between reconnections (tests pass a fake).
        rng: a uniform [0, 1) source for the jitter.

    Raises:
        ConfigError: the URL is invalid or the queue size is not positive.
    """

    def __init__(
        self,
        url: str,
        topic_prefix: str = "allotment",
        queue_size: int = 10_000,
        metrics: Metrics | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if queue_size < 1:
            raise ConfigError(f"mqtt queue_size {queue_size} must be at least 1")
        self.address = parse_broker_url(url)
        self.topic_prefix = topic_prefix.rstrip("/")
        self.queue_size = queue_size
        self._metrics = metrics
        self._tls_context = tls_context
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = rng
        self._queue: deque[_Message] = deque()
        self._summaries: dict[str, _Message] = {}
        self._dirty_summaries: set[str] = set()
        self._wakeup = asyncio.Event()
        self.n_dropped = 0
        self.n_published = 0
        self.n_connections = 0
        self.is_connected = False

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "disconnected"
        return (
            f"<EventPublisher {self.address.host}:{self.address.port} {state} "
            f"queued={len(self._queue)}/{self.queue_size} dropped={self.n_dropped}>"
        )

    @property
    def status_topic(self) -> str:
        """The retained `online`/`offline` topic of this server."""
        return f"{self.topic_prefix}/status"

    @property
    def n_queued(self) -> int:
        """Events waiting for the broker (summaries not included)."""
        return len(self._queue)

    # The service's calls: synchronous, never blocking.

    def publish_job(self, event: JobEvent) -> None:
        """Queue a job state change."""
        topic = job_topic(self.topic_prefix, event.machine, event.job_id)
        self._enqueue(_Message(topic, event.model_dump_json().encode(), is_retained=False))

    def publish_run(self, event: RunEvent) -> None:
        """Queue a run event of the dispatch extension."""
        topic = run_topic(self.topic_prefix, event.machine, event.job_id)
        self._enqueue(_Message(topic, event.model_dump_json().encode(), is_retained=False))

    def publish_board(self, event: BoardEvent) -> None:
        """Queue a board state change (retained at the broker: the board's latest state)."""
        topic = board_topic(self.topic_prefix, event.machine, event.x, event.y, event.z)
        self._enqueue(_Message(topic, event.model_dump_json().encode(), is_retained=True))

    def publish_machine(self, event: MachineEvent) -> None:
        """Queue a machine change (added, changed, removed, drained, undrained)."""
        topic = machine_topic(self.topic_prefix, event.machine)
        self._enqueue(_Message(topic, event.model_dump_json().encode(), is_retained=False))

    def publish_machine_summary(self, summary: MachineSummary) -> None:
        """Set the retained summary of a machine; only the latest is ever sent."""
        topic = summary_topic(self.topic_prefix, summary.machine)
        message = _Message(topic, summary.model_dump_json().encode(), is_retained=True)
        self._summaries[summary.machine] = message
        self._dirty_summaries.add(summary.machine)
        self._wakeup.set()

    def forget_board(self, machine: str, x: int, y: int, z: int) -> None:
        """Clear the retained state of a board that is no longer in the configuration."""
        self._enqueue(_Message(board_topic(self.topic_prefix, machine, x, y, z), b"", True))

    def forget_machine(self, machine: str) -> None:
        """Clear the retained summary of a machine that left the configuration."""
        topic = summary_topic(self.topic_prefix, machine)
        self._summaries[machine] = _Message(topic, b"", is_retained=True)
        self._dirty_summaries.add(machine)
        self._wakeup.set()

    def _enqueue(self, message: _Message) -> None:
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()
            self._count_drop("queue_full")
        self._queue.append(message)
        if self._metrics is not None:
            self._metrics.mqtt_queue_length(len(self._queue))
        self._wakeup.set()

    def _count_drop(self, reason: str) -> None:
        self.n_dropped += 1
        if self._metrics is not None:
            self._metrics.mqtt_dropped(reason)

    # The connection, run as a task in the server's task group.

    async def run(self) -> NoReturn:
        """Connect, publish what is queued, and reconnect forever; cancel to stop.

        Broker errors are logged and retried, never raised: the allocation service must not
        notice the broker. Backoff doubles from `backoff_initial_s` up to `backoff_max_s`,
        with full jitter down to half the delay; it restarts after a working connection.
        """
        backoff_s = self._backoff_initial_s
        while True:
            failed = False
            try:
                async with self._client() as client, asyncio.TaskGroup() as tg:
                    self._set_connected(True)
                    backoff_s = self._backoff_initial_s
                    tg.create_task(self._watch(client))
                    await self._serve(client)
            except* aiomqtt.MqttError as group:
                # Also reached when the first connect fails; both mean "try again later".
                failed = True
                _log.warning(
                    "mqtt broker %s:%d: %s",
                    self.address.host,
                    self.address.port,
                    "; ".join(str(error) for error in group.exceptions),
                )
            finally:
                if self.is_connected:
                    self._set_connected(False)  # a connection lost: counted as a failure
                elif failed and self._metrics is not None:
                    self._metrics.mqtt_connected(False)  # a connection that never came up
            delay_s = backoff_s * (0.5 + 0.5 * self._rng())
            backoff_s = min(backoff_s * 2, self._backoff_max_s)
            await self._sleep(delay_s)

    async def _watch(self, client: aiomqtt.Client) -> None:
        # Nothing is subscribed, so this only ends by raising MqttError when the connection
        # drops: it notices a lost broker while the queue is idle.
        async for _ in client.messages:
            pass
        raise aiomqtt.MqttError("message stream ended")

    def _set_connected(self, is_connected: bool) -> None:
        self.is_connected = is_connected
        if is_connected:
            self.n_connections += 1
        if self._metrics is not None:
            self._metrics.mqtt_connected(is_connected)

    def _client(self) -> aiomqtt.Client:
        tls_context = self._tls_context
        if self.address.is_tls and tls_context is None:
            tls_context = ssl.create_default_context()
        return aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            tls_context=tls_context if self.address.is_tls else None,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=_QOS, retain=True),
            timeout=_PUBLISH_TIMEOUT_S,
        )

    async def _serve(self, client: aiomqtt.Client) -> NoReturn:
        await self._send(client, _Message(self.status_topic, b"online", is_retained=True))
        # The broker may have lost its retained store; make every summary current again.
        self._dirty_summaries.update(self._summaries)
        while True:
            self._wakeup.clear()
            while self._queue:
                message = self._queue.popleft()
                try:
                    await self._send(client, message)
                except BaseException:
                    # Failed or cut short by a lost connection: deliver it after reconnecting.
                    self._requeue(message)
                    raise
                finally:
                    if self._metrics is not None:
                        self._metrics.mqtt_queue_length(len(self._queue))
                self._count_published()
            while self._dirty_summaries:
                machine = self._dirty_summaries.pop()
                message = self._summaries[machine]
                try:
                    await self._send(client, message)
                except BaseException:
                    self._dirty_summaries.add(machine)
                    raise
                if not message.payload and self._summaries.get(machine) is message:
                    del self._summaries[machine]
                self._count_published()
            if not self._queue and not self._dirty_summaries:
                await self._wakeup.wait()

    async def _send(self, client: aiomqtt.Client, message: _Message) -> None:
        await client.publish(
            message.topic,
            message.payload,
            qos=_QOS,
            retain=message.is_retained,
            timeout=_PUBLISH_TIMEOUT_S,
        )
        # On Python 3.11 `asyncio.wait_for` (used inside aiomqtt) can swallow a cancellation
        # that races with the publish completing; honour it here, or stopping would hang.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    def _requeue(self, message: _Message) -> None:
        # Not delivered: put it back at the head unless newer events filled the queue.
        if len(self._queue) < self.queue_size:
            self._queue.appendleft(message)
        else:
            self._count_drop("queue_full")

    def _count_published(self) -> None:
        self.n_published += 1
        if self._metrics is not None:
            self._metrics.mqtt_published()
