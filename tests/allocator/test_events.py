"""The MQTT event publisher, against a real Mosquitto (the `mqtt_broker` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from allocator.errors import ConfigError
from allocator.events import EventPublisher, parse_broker_url
from allocator.metrics import Metrics
from protocol.events import BoardEvent, BoardState, JobEvent, MachineSummary

_GUARD_S = 10.0  # a failure guard only: every wait below ends as soon as its event happens


def _summary(machine: str, n_free: int) -> MachineSummary:
    return MachineSummary(
        timestamp_s=1.0,
        machine=machine,
        n_boards=3,
        n_boards_by_state={BoardState.FREE: n_free, BoardState.ALLOCATED: 3 - n_free},
        n_jobs=3 - n_free,
        queue_length=0,
    )


def _job(job_id: int) -> JobEvent:
    return JobEvent(
        timestamp_s=2.0,
        job_id=job_id,
        state=3,
        state_name="ready",
        owner="me",
        machine="spin5",
        power=True,
        n_boards=1,
    )


@contextlib.asynccontextmanager
async def _subscriber(host: str, port: int, topic: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic, qos=1)
        yield client


async def _clear_retained(host: str, port: int, prefix: str) -> None:
    async with aiomqtt.Client(host, port) as client:
        for topic in (
            f"{prefix}/status",
            f"{prefix}/spin5/summary",
            f"{prefix}/spin5/boards/1/2/0",
        ):
            await client.publish(topic, b"", qos=1, retain=True)


@contextlib.asynccontextmanager
async def _running(publisher: EventPublisher) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(publisher.run())
        try:
            yield
        finally:
            task.cancel()


async def test_subscriber_sees_events_and_late_one_the_retained_summary(
    mqtt_broker: tuple[str, int],
) -> None:
    host, port = mqtt_broker
    prefix = f"allotment-test-{uuid.uuid4().hex[:8]}"
    metrics = Metrics()
    publisher = EventPublisher(f"mqtt://{host}:{port}", prefix, 100, metrics)
    try:
        async with _subscriber(host, port, f"{prefix}/#") as early, _running(publisher):
            publisher.publish_job(_job(7))
            publisher.publish_board(
                BoardEvent(
                    timestamp_s=2.0,
                    machine="spin5",
                    x=1,
                    y=2,
                    z=0,
                    cabinet=0,
                    frame=1,
                    board=5,
                    state=BoardState.ALLOCATED,
                    job_id=7,
                )
            )
            publisher.publish_machine_summary(_summary("spin5", 2))
            seen: dict[str, bytes] = {}
            async with asyncio.timeout(_GUARD_S):
                async for message in early.messages:
                    seen[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                    if len(seen) == 4:
                        break
            assert JobEvent.model_validate_json(seen[f"{prefix}/spin5/jobs/7"]) == _job(7)
            board = BoardEvent.model_validate_json(seen[f"{prefix}/spin5/boards/1/2/0"])
            assert (board.state, board.job_id) == (BoardState.ALLOCATED, 7)
            assert seen[f"{prefix}/status"] == b"online"

            async with _subscriber(host, port, f"{prefix}/+/summary") as late:
                async with asyncio.timeout(_GUARD_S):
                    message = await anext(aiter(late.messages))
                assert message.retain
                summary = MachineSummary.model_validate_json(message.payload)  # type: ignore[arg-type]
                assert summary == _summary("spin5", 2)
        assert metrics.value("allotment_mqtt_events_published_total") == 3  # status not counted
        assert (
            metrics.value("allotment_mqtt_events_dropped_total", {"reason": "queue_full"}) is None
        )
    finally:
        await _clear_retained(host, port, prefix)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_broker_never_blocks_and_drops_are_counted() -> None:
    metrics = Metrics()
    delays_s: list[float] = []
    retried = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        delays_s.append(seconds)
        if len(delays_s) == 4:
            retried.set()
            await asyncio.Event().wait()  # park the loop here; the test is done with it

    publisher = EventPublisher(
        f"mqtt://127.0.0.1:{_closed_port()}",
        "t",
        queue_size=5,
        metrics=metrics,
        backoff_initial_s=1.0,
        backoff_max_s=4.0,
        sleep=fake_sleep,
        rng=lambda: 0.0,
    )
    async with _running(publisher):
        for job_id in range(12):
            publisher.publish_job(_job(job_id))
        publisher.publish_machine_summary(_summary("spin5", 1))
        assert publisher.n_queued == 5
        async with asyncio.timeout(_GUARD_S):
            await retried.wait()
    assert publisher.n_dropped == 7
    assert metrics.value("allotment_mqtt_events_dropped_total", {"reason": "queue_full"}) == 7
    assert metrics.value("allotment_mqtt_queue_length") == 5
    assert metrics.value("allotment_mqtt_connected") == 0
    # Full jitter down to half the delay (rng 0.0), doubling, capped at backoff_max_s.
    assert delays_s == [0.5, 1.0, 2.0, 2.0]
    assert publisher.n_connections == 0
    # every attempt that failed is a failure (a wrong URL used to read 0 failures for ever)
    assert metrics.value("allotment_mqtt_connect_failures_total") == 4


class _Proxy:
    """A TCP relay to the broker whose connections the test can cut, like a broker restart."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._writers: list[asyncio.StreamWriter] = []
        self.n_accepted = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.n_accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._pipe(reader, up_writer))
            tg.create_task(self._pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


async def test_reconnects_and_republishes_summary(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    prefix = f"allotment-test-{uuid.uuid4().hex[:8]}"
    proxy = _Proxy(host, port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]

    async def no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    publisher = EventPublisher(f"mqtt://127.0.0.1:{proxy_port}", prefix, 100, sleep=no_sleep)
    try:
        async with (
            server,
            _subscriber(host, port, f"{prefix}/+/summary") as watcher,
            _running(publisher),
        ):
            publisher.publish_machine_summary(_summary("spin5", 3))
            messages = aiter(watcher.messages)
            async with asyncio.timeout(_GUARD_S):
                first = await anext(messages)
            proxy.cut()
            publisher.publish_job(_job(1))  # the failed publish reveals the lost connection
            async with asyncio.timeout(_GUARD_S):
                again = await anext(messages)
            assert first.payload == again.payload
            assert publisher.n_connections >= 2
            assert proxy.n_accepted >= 2
    finally:
        await _clear_retained(host, port, prefix)


@pytest.mark.parametrize(
    ("url", "fact"),
    [("http://h", "scheme 'http'"), ("mqtt://", "names no host"), ("mqtt://h:99999", "bad port")],
)
def test_bad_broker_url_is_a_config_error(url: str, fact: str) -> None:
    with pytest.raises(ConfigError, match=fact):
        parse_broker_url(url)


def test_broker_url_defaults_and_credentials() -> None:
    assert parse_broker_url("mqtts://ops:p%40ss@broker") == ("broker", 8883, True, "ops", "p@ss")
    assert parse_broker_url("mqtt://broker").port == 1883


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="queue_size 0"):
        EventPublisher("mqtt://h", queue_size=0)
