"""Dispatch end to end: a real server process loads, validates, runs images and keeps results.

Boards come from the server through the real spalloc client or allotment's own; networks are
built with `toolchain`; every run's results are held against `Executor` run in this process
on the same image, bit for bit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from allocator.dispatch import storage
from allocator.dispatch.storage import JobFolderRecord
from machine_models import Executor, Image
from machine_models.executor import Results
from machine_models.geometry import ChipXY, Link, chip_to_board
from machine_models.results_file import join_results
from protocol.client import AllotmentClient
from protocol.dispatch import RunState, RunStatus
from protocol.errors import ServerError
from tests.e2e.conftest import SERVER_TOML, RawClient, ServerProcess
from toolchain import (
    IFCurrExp,
    MappedNetwork,
    MappingConfig,
    Network,
    OneToOne,
    SpikeSourcePoisson,
    StaticSynapse,
    allocation_from_machine_info,
    map_network,
)
from toolchain.errors import RemoteRunError
from toolchain.remote import RemoteMachine, run_on_server

WAIT_S = 120.0
LONG_RUN_STEPS = 10_000_000
"""A run that would take minutes: it is stopped long before it ends."""

OPERATOR_TOKEN = "op-token"
DISPATCH_TOML = (
    SERVER_TOML.replace("[server]\n", f'[server]\noperator_token = "{OPERATOR_TOKEN}"\n').replace(
        "[dispatch]\n",
        "[dispatch]\nworkers = 2\nresults_grace_s = 0.0\nmax_image_bytes = 20000000\n",
    )
    + """
[[machines]]
name = "torus"
tags = ["torus"]
width = 1
height = 1
board_locations = [[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 2, 0, 0, 2]]
[machines.addresses]
base_ip = "10.9.0.0"

[[machines]]
name = "faulty"
tags = ["faulty"]
single_board = {bmp_ip = "10.8.0.0", spinnaker_ip = "10.8.0.1"}
"""
).replace("[dispatch]", '[dispatch]\ndead_chips = [["faulty", 0, 0]]')


def _network(n: int = 100, *, seed: int = 3, rate_hz: float = 50.0) -> Network:
    net = Network(dt_ms=1.0, seed=seed)
    drive = net.population(n, SpikeSourcePoisson(rate=rate_hz), "drive")
    cells = net.population(n, IFCurrExp(), "cells")
    net.project(drive, cells, OneToOne(), StaticSynapse(weight=2.0, delay=1.0))
    cells.record("spikes")
    cells.record("v")
    return net


def _assert_same(remote: Results, local: Results) -> None:
    assert remote.spikes.keys() == local.spikes.keys()
    assert sum(len(s) for s in local.spikes.values()) > 0, "the network must spike"
    for core, spikes in local.spikes.items():
        assert remote.spikes[core].dtype == spikes.dtype
        assert remote.spikes[core].tobytes() == spikes.tobytes(), core
    assert remote.v_mv.keys() == local.v_mv.keys()
    for core, v in local.v_mv.items():
        assert remote.v_mv[core].tobytes() == v.tobytes(), core
    assert remote.core_provenance == local.core_provenance
    assert remote.router_provenance == local.router_provenance


def _in_process(mapped: MappedNetwork, *runs: int) -> list[Results]:
    executor = Executor(mapped.image, mapped.topology)
    return [executor.run(n) for n in runs]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One dispatch server for the module (tests use jobs of their own)."""
    from tests.e2e.conftest import write_server_config

    where = tmp_path_factory.mktemp("dispatch-server")
    process = ServerProcess(
        write_server_config(where, DISPATCH_TOML), f"sqlite:///{where / 'a.db'}", where
    )
    process.start()
    yield process
    process.stop()


async def _client(server: ServerProcess) -> AllotmentClient:
    return await AllotmentClient.connect(server.host, server.port, timeout_s=WAIT_S)


async def _ready_job(client: AllotmentClient, *dims: int, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("owner", "runner")
    job_id = await client.create_job(*dims, **kwargs)
    await client.notify_job(job_id)
    while (state := await client.get_job_state(job_id)).state != 3:
        assert state.state in (1, 2), state
        await client.receive_notification(timeout_s=WAIT_S)
    info = (await client.get_job_machine_info(job_id)).model_dump(mode="json")
    info["job_id"] = job_id
    return info


async def _run(client: AllotmentClient, job_id: int, token: str, n: int, **kw: Any) -> RunStatus:
    await client.start_run(job_id, token, n, **kw)
    return await client.wait_for_run(job_id, token, timeout_s=WAIT_S)


async def _until_running(client: AllotmentClient, job_id: int, token: str) -> RunStatus:
    """Start a very long run and wait for its first progress (or its end, if it came first:
    on a loaded machine a short keepalive can expire before the worker has started)."""
    await client.start_run(job_id, token, LONG_RUN_STEPS)
    while True:
        notification = await client.receive_notification(timeout_s=WAIT_S)
        status = getattr(notification, "run_progress", None)
        if status is None:
            continue
        if status.state.is_over or (status.state is RunState.RUNNING and status.steps_done > 0):
            return status


async def _job_and_image(client: AllotmentClient, **kwargs: Any) -> tuple[int, Image]:
    """A ready job and the standard network's image for it (not loaded)."""
    info = await _ready_job(client, **kwargs)
    return info["job_id"], map_network(_network(), allocation_from_machine_info(info)).image


async def _loaded_job(client: AllotmentClient, **kwargs: Any) -> tuple[int, MappedNetwork, str]:
    """A ready job of one board with the standard network loaded: (job id, mapping, token)."""
    info = await _ready_job(client, **kwargs)
    job_id = info["job_id"]
    mapped = map_network(_network(), allocation_from_machine_info(info))
    token = (await client.load_image(job_id, mapped.image.encode(), owner="runner")).token
    return job_id, mapped, token


def _job_folder(server: ServerProcess, job_id: int) -> Path:
    return server.config_path.parent / "allotment-dispatch" / f"job-{job_id}"


# --- the whole path ---------------------------------------------------------------------------


async def test_spalloc_job_then_load_run_fetch_equals_in_process(server: ServerProcess) -> None:
    from spalloc_client import Job

    with Job(
        hostname=server.host,
        port=server.port,
        owner="spalloc-user",
        keepalive=60.0,
        timeout=WAIT_S,
        config_filenames=[],
    ) as job:
        job.wait_until_ready(timeout=WAIT_S)
        async with await _client(server) as client:
            info = (await client.get_job_machine_info(job.id)).model_dump(mode="json")
            mapped = map_network(_network(), allocation_from_machine_info(info))
            loaded = await client.load_image(job.id, mapped.image.encode(), owner="spalloc-user")
            assert loaded.n_cores == len(mapped.image.cores)
            status = await _run(client, job.id, loaded.token, 300)
            assert (status.state, status.steps_done) == (RunState.DONE, 300)
            remote, _ = _decode(await client.fetch_results(job.id, loaded.token))
    (local,) = _in_process(mapped, 300)
    _assert_same(remote, local)


def _decode(data: bytes) -> tuple[Results, Any]:
    from machine_models.results_file import decode_results

    return decode_results(data)


async def test_several_boards_with_wrap_around(server: ServerProcess) -> None:
    async with await _client(server) as client:
        info = await _ready_job(client, 1, 1, machine="torus", require_torus=True)
        assert (info["width"], info["height"]) == (12, 12), "a whole torus wraps"
        topology = allocation_from_machine_info(info)
        assert topology.neighbour(ChipXY(0, 0), 3) == ChipXY(11, 0), "west of (0, 0) wraps"
        # Eight cells a core: cores on all three boards, and routes over the wrap links.
        config = MappingConfig(max_atoms_per_core={"IF_curr_exp": 8, "SpikeSourcePoisson": 8})
        net = Network(dt_ms=1.0, seed=5)
        for index in range(2):
            drive = net.population(2000, SpikeSourcePoisson(rate=50.0), f"drive{index}")
            cells = net.population(2000, IFCurrExp(), f"cells{index}")
            net.project(drive, cells, OneToOne(), StaticSynapse(weight=2.0, delay=1.0))
            cells.record("spikes")
        mapped = map_network(net, topology, config)
        boards = {chip_to_board(core.chip, 1, 1)[0] for core in mapped.image.cores}
        assert len(boards) == 3
        assert any(
            entry.route >> int(link) & 1
            and not (0 <= chip.x + link.delta[0] < 12 and 0 <= chip.y + link.delta[1] < 12)
            for chip, entries in mapped.image.tables.items()
            for entry in entries
            for link in Link
        ), "some route crosses the edge of the grid"
        loaded = await client.load_image(info["job_id"], mapped.image.encode(), owner="runner")
        await _run(client, info["job_id"], loaded.token, 200)
        remote, _ = _decode(await client.fetch_results(info["job_id"], loaded.token))
    (local,) = _in_process(mapped, 200)
    _assert_same(remote, local)


def test_remote_machine_continuation_and_fresh_runs(server: ServerProcess) -> None:
    net = _network(seed=11)
    with RemoteMachine.allocate(server.host, server.port, owner="runner", n_boards=1) as machine:
        mapped = map_network(net, machine.topology)
        machine.load(mapped.image)
        seen: list[tuple[int, int]] = []
        machine.run(100, progress=lambda done, total: seen.append((done, total)))
        assert seen[-1] == (100, 100)
        machine.run(100)
        two_runs = machine.results()
        machine.run(150, fresh=True)
        fresh = machine.results()
    (one_run,) = _in_process(mapped, 200)
    _assert_same(two_runs, one_run)
    _assert_same(fresh, _in_process(mapped, 150)[0])


def test_run_on_server_does_the_whole_path(server: ServerProcess) -> None:
    mapped, results = run_on_server(
        _network(seed=2), 120, host=server.host, port=server.port, owner="runner"
    )
    _assert_same(results, _in_process(mapped, 120)[0])


# --- loads that keep the running state ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_keep_state_load_of_the_same_image_goes_on_as_one_long_run(
    server: ServerProcess, backend: str
) -> None:
    async def scenario() -> tuple[MappedNetwork, Results, int]:
        async with await _client(server) as client:
            job_id, mapped, token = await _loaded_job(client)
            await _run(client, job_id, token, 120)
            again = await client.load_image(
                job_id, mapped.image.encode(), token=token, keep_state=True
            )
            status = await _run(client, job_id, token, 80)
            assert (status.first_step, status.steps_done) == (120, 80)
            remote, _ = _decode(await client.fetch_results(job_id, token))
            await client.destroy_job(job_id)
            return mapped, remote, again.state_step

    mapped, remote, state_step = anyio.run(scenario, backend=backend)
    assert state_step == 120
    (one_run,) = _in_process(mapped, 200)
    _assert_same(remote, one_run)


async def test_a_keep_state_load_runs_on_with_the_new_parameters(server: ServerProcess) -> None:
    async with await _client(server) as client:
        info = await _ready_job(client)
        job_id, topology = info["job_id"], allocation_from_machine_info(info)
        slow = map_network(_network(rate_hz=20.0), topology)
        fast = map_network(_network(rate_hz=90.0), topology)
        token = (await client.load_image(job_id, slow.image.encode(), owner="runner")).token
        await _run(client, job_id, token, 100)
        await client.load_image(job_id, fast.image.encode(), token=token, keep_state=True)
        await _run(client, job_id, token, 100)
        remote, _ = _decode(await client.fetch_results(job_id, token))
    first = Executor(slow.image, slow.topology)
    before = first.run(100)
    second = Executor(fast.image, fast.topology)
    second.adopt_state(first)
    after = second.run(100)
    _assert_same(remote, join_results([before, after]))
    unchanged = Executor(slow.image, slow.topology).run(200)
    n_spikes = sum(len(rows) for rows in remote.spikes.values())
    assert n_spikes > sum(len(rows) for rows in unchanged.spikes.values()), "the rate went up"


async def test_a_keep_state_load_of_another_layout_is_refused_and_the_run_goes_on(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        info = await _ready_job(client)
        job_id, topology = info["job_id"], allocation_from_machine_info(info)
        mapped = map_network(_network(), topology)
        token = (await client.load_image(job_id, mapped.image.encode(), owner="runner")).token
        await _run(client, job_id, token, 100)
        sha256 = hashlib.sha256(mapped.image.encode()).hexdigest()
        bigger = map_network(_network(n=120), topology).image
        with pytest.raises(
            ServerError,
            match=rf"image for job {job_id} cannot take over the running state: cannot continue"
            r" a run on another layout: core \(0, 0, 2\) holds other neurons"
            r" \(base and count \[0, 100\], now \[0, 120\]\)",
        ):
            await client.load_image(job_id, bigger.encode(), token=token, keep_state=True)
        more = _network()
        more.population(10, IFCurrExp(), "extra").record("spikes")
        elsewhere = map_network(more, topology).image
        with pytest.raises(
            ServerError, match=r"core \(\d+, \d+, \d+\) is idle but the new image places IF_"
        ):
            await client.load_image(job_id, elsewhere.encode(), token=token, keep_state=True)
        await _eventually_empty_but(server, job_id, {"record.json", "image.bin", "snap-1"})
        record = json.loads((_job_folder(server, job_id) / "record.json").read_bytes())
        assert (record["image"]["sha256"], record["snapshot"], record["state_step"]) == (
            sha256,
            "snap-1",
            100,
        )
        status = await _run(client, job_id, token, 100)
        assert (status.first_step, status.state) == (100, RunState.DONE)
        remote, _ = _decode(await client.fetch_results(job_id, token))
    (one_run,) = _in_process(mapped, 200)
    _assert_same(remote, one_run)


async def test_a_keep_state_load_before_any_run_loads_afresh(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, mapped, token = await _loaded_job(client)
        other = map_network(_network(n=120, seed=8), mapped.topology)
        loaded = await client.load_image(job_id, other.image.encode(), token=token, keep_state=True)
        assert loaded.state_step == 0
        await _run(client, job_id, token, 50)
        remote, _ = _decode(await client.fetch_results(job_id, token))
    _assert_same(remote, _in_process(other, 50)[0])


async def test_a_new_image_drops_the_old_state_and_runs_from_the_image(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 60)).state is RunState.DONE
        folder = _job_folder(server, job_id)
        for _ in range(200):  # the worker saves the state after the run is done
            if list(folder.glob("snap-*/state.pickle")):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no state saved: {_leftovers(server, job_id)}")
        other = map_network(_network(n=120, seed=8), mapped.topology)
        await client.load_image(job_id, other.image.encode(), token=token)
        # Out of the snapshot before the reply, whatever the removal's progress.
        assert not list(folder.glob("snap-*/state.pickle"))
        await _eventually_empty_but(server, job_id, {"record.json", "image.bin", "snap-1"})
        assert (await _run(client, job_id, token, 50)).state is RunState.DONE
        remote, _ = _decode(await client.fetch_results(job_id, token))
    _assert_same(remote, _in_process(other, 50)[0])


async def _eventually_empty_but(server: ServerProcess, job_id: int, kept: set[str]) -> None:
    for _ in range(200):
        if set(_leftovers(server, job_id)) == kept:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"left behind: {_leftovers(server, job_id)}, not {sorted(kept)}")


# --- access -------------------------------------------------------------------------------------


async def test_only_the_token_holder_reaches_the_image_runs_and_results(
    server: ServerProcess,
) -> None:
    async with await _client(server) as owner, await _client(server) as other:
        info = await _ready_job(owner)
        job_id = info["job_id"]
        data = map_network(_network(), allocation_from_machine_info(info)).image.encode()
        with pytest.raises(ServerError, match=f"first load_image of job {job_id} must name"):
            await other.load_image(job_id, data, owner="someone else")
        loaded = await owner.load_image(job_id, data, owner="runner")
        for call in (
            other.start_run(job_id, "not-the-token", 10),
            other.run_status(job_id, "not-the-token"),
            other.fetch_results(job_id, "not-the-token"),
            other.load_image(job_id, data, owner="runner"),
        ):
            with pytest.raises(ServerError, match=f"job {job_id}'s image, runs and results need"):
                await call
        status = await _run(owner, job_id, loaded.token, 10)
        assert status.state is RunState.DONE


# --- stopping ---------------------------------------------------------------------------------


async def test_destroy_stops_the_run_at_once_with_a_reason(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await _until_running(client, job_id, token)
        await client.destroy_job(job_id, "the user gave up")
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
    assert status.state is RunState.STOPPED
    assert status.reason == f"job {job_id} was destroyed: the user gave up"


async def test_an_operators_destroy_stops_the_run(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await _until_running(client, job_id, token)
        await client.call("admin_destroy_job", OPERATOR_TOKEN, job_id, "maintenance")
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
    assert status.state is RunState.STOPPED
    assert status.reason is not None
    assert status.reason.startswith(f"job {job_id} was destroyed: ")
    assert "maintenance" in status.reason


async def test_keepalive_expiry_stops_the_run(server: ServerProcess) -> None:
    async with await _client(server) as client, await _client(server) as keeper:
        info = await _ready_job(client, keepalive_s=3.0)
        job_id = info["job_id"]

        async def keep_alive() -> None:
            while True:
                await keeper.job_keepalive(job_id)
                await asyncio.sleep(0.5)

        # Kept alive (however slow the machine) until the run goes, then left to expire.
        keeping = asyncio.create_task(keep_alive())
        mapped = map_network(_network(), allocation_from_machine_info(info))
        token = (await client.load_image(job_id, mapped.image.encode(), owner="runner")).token
        await _until_running(client, job_id, token)
        keeping.cancel()
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
    assert status.state is RunState.STOPPED
    assert status.reason == f"job {job_id} was destroyed: Job timed out."


async def test_power_off_stops_the_run_and_drops_the_image(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await _until_running(client, job_id, token)
        await client.power_off_job_boards(job_id)
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
        assert status.state is RunState.STOPPED
        assert status.reason is not None
        assert status.reason.startswith(f"job {job_id}'s boards were powered off")
        with pytest.raises(ServerError, match="has its boards powered off"):
            await client.start_run(job_id, token, 10)
        await client.power_on_job_boards(job_id)
        while (await client.get_job_state(job_id)).state != 3:
            await client.receive_notification(timeout_s=WAIT_S)
        with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
            await client.start_run(job_id, token, 10)


async def test_stop_run_stops_and_the_job_runs_again(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, mapped, token = await _loaded_job(client)
        await _until_running(client, job_id, token)
        stopped = await client.stop_run(job_id, token, "enough")
        assert (stopped.state, stopped.reason) == (RunState.STOPPED, "enough")
        status = await _run(client, job_id, token, 50)
        assert status.state is RunState.DONE
        remote, _ = _decode(await client.fetch_results(job_id, token))
    _assert_same(remote, _in_process(mapped, 50)[0])


# --- refused images and uploads ---------------------------------------------------------------


async def test_image_for_chips_outside_the_allocation_is_refused_naming_the_chip(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        job_id, image = await _job_and_image(client)
        moved = dataclasses.replace(
            image, cores=(dataclasses.replace(image.cores[0], chip=ChipXY(9, 2)), *image.cores[1:])
        )
        with pytest.raises(ServerError) as refused:
            await client.load_image(job_id, moved.encode(), owner="runner")
        assert str(refused.value) == (
            f"image for job {job_id} rejected: chip (9, 2) is not on the allocated boards"
        )
        assert not (_job_folder(server, job_id) / "image.bin").exists()


async def test_image_for_a_dead_chip_is_refused_naming_the_chip(server: ServerProcess) -> None:
    async with await _client(server) as client:
        # The job runner does not know chip (0, 0) is dead: the toolchain places cores there.
        job_id, image = await _job_and_image(client, machine="faulty")
        assert ChipXY(0, 0) in {core.chip for core in image.cores}
        with pytest.raises(ServerError, match=r"rejected: chip \(0, 0\) is dead"):
            await client.load_image(job_id, image.encode(), owner="runner")


async def test_with_every_worker_busy_a_bad_image_is_still_refused_naming_the_chip(
    server: ServerProcess,
) -> None:
    # No worker is free to validate: the server validates on a thread of its own, with the
    # same verdict and nothing kept.
    async with await _client(server) as client:
        runs = [await _loaded_job(client) for _ in range(2)]
        for job_id, _, token in runs:
            await _until_running(client, job_id, token)
        job_id, image = await _job_and_image(client)
        moved = dataclasses.replace(
            image, cores=(dataclasses.replace(image.cores[0], chip=ChipXY(9, 2)), *image.cores[1:])
        )
        with pytest.raises(ServerError) as refused:
            await client.load_image(job_id, moved.encode(), owner="runner")
        assert str(refused.value) == (
            f"image for job {job_id} rejected: chip (9, 2) is not on the allocated boards"
        )
        await _eventually_empty(server, job_id)
        loaded = await client.load_image(job_id, image.encode(), owner="runner")
        assert loaded.n_cores == len(image.cores)
        for run_job, _, token in runs:
            assert (await client.stop_run(run_job, token)).state is RunState.STOPPED


def _header(job_id: int, n_bytes: int, sha256: str | None, owner: str = "runner") -> bytes:
    line = {
        "command": "load_image",
        "args": [job_id],
        "kwargs": {"n_bytes": n_bytes, "sha256": sha256, "owner": owner},
    }
    return json.dumps(line).encode() + b"\n"


def _leftovers(server: ServerProcess, job_id: int) -> list[str]:
    folder = _job_folder(server, job_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_bad_uploads_leave_nothing_behind(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, decoded = await _job_and_image(client)
    image = decoded.encode()
    sha = hashlib.sha256(image).hexdigest()

    raw = RawClient(server.host, server.port)
    try:
        # Oversized: refused before a single byte of the body is sent.
        raw.send_line(_header(job_id, 20_000_001, sha))
        assert raw.read_reply() == {
            "exception": f"an image of 20000001 bytes for job {job_id} is over the limit of"
            " 20000000 bytes"
        }
        # Bad checksum: every byte comes, the digest does not match.
        raw.send_line(_header(job_id, len(image), "0" * 64))
        assert raw.read_reply() == {"return": {"accepting_bytes": len(image)}}
        raw.send_line(image)
        reply = raw.read_reply()
        assert reply is not None
        assert "not " + "0" * 64 + " as announced" in reply["exception"]
        # Wrong length: a truncated image whose checksum matches its bytes.
        short = image[:-7]
        raw.send_line(_header(job_id, len(short), hashlib.sha256(short).hexdigest()))
        assert raw.read_reply() == {"return": {"accepting_bytes": len(short)}}
        raw.send_line(short)
        reply = raw.read_reply()
        assert reply is not None
        assert "malformed image: truncated" in reply["exception"]
        # The connection still serves requests.
        assert raw.call("get_job_state", job_id)["state"] == 3
    finally:
        raw.close()
    # Dropped halfway: the client goes away in the middle of the body.
    raw = RawClient(server.host, server.port)
    raw.send_line(_header(job_id, len(image), sha))
    assert raw.read_reply() == {"return": {"accepting_bytes": len(image)}}
    raw.send_line(image[: len(image) // 2])
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    async with await _client(server) as client:
        await client.get_job_state(job_id)  # the server goes on
        await _eventually_empty(server, job_id)
        loaded = await client.load_image(job_id, image, owner="runner")
        assert loaded.sha256 == sha


async def test_uploads_in_flight_and_the_free_disk_bound_what_images_are_taken(
    start_server: Any,
) -> None:
    # One client could make many jobs and hold an upload open on each, filling the disk
    # with unfinished images: only the per-job limit was enforced.
    server: ServerProcess = start_server(
        config_text=DISPATCH_TOML.replace(
            "[dispatch]\n", "[dispatch]\nmax_uploading_bytes = 30000000\n"
        )
    )
    async with await _client(server) as client:
        first, decoded = await _job_and_image(client)
        second, _ = await _job_and_image(client)
    image = decoded.encode()
    sha = hashlib.sha256(image).hexdigest()
    holding = RawClient(server.host, server.port)
    try:
        holding.send_line(_header(first, 20_000_000, None))  # announced, never sent
        assert holding.read_reply() == {"return": {"accepting_bytes": 20_000_000}}
        raw = RawClient(server.host, server.port)
        try:
            raw.send_line(_header(second, 10_000_001, sha))
            assert raw.read_reply() == {
                "exception": "the server is receiving 20000000 bytes of images already, and"
                f" 10000001 more for job {second} would pass its limit of 30000000: try again"
                " shortly"
            }
        finally:
            raw.close()
    finally:
        holding.close()
    async with await _client(server) as client:
        for _ in range(200):  # once the server has seen the held upload end
            try:
                await client.load_image(second, image, owner="runner")
                break
            except ServerError as error:
                if "receiving" not in str(error):
                    raise
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the held upload never ended")
    tight: ServerProcess = start_server(
        config_text=DISPATCH_TOML.replace(
            "[dispatch]\n", "[dispatch]\nmin_free_bytes = 1000000000000000000\n"
        )
    )
    async with await _client(tight) as client:
        job_id, decoded = await _job_and_image(client)
        with pytest.raises(ServerError, match=r"the server's disk has \d+ bytes free"):
            await client.load_image(job_id, decoded.encode(), owner="runner")


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_connection_ended_before_the_trailer_leaves_the_server_serving(
    start_server: Any, how: str
) -> None:
    server: ServerProcess = start_server(
        config_text=DISPATCH_TOML.replace("[dispatch]\n", "[dispatch]\nupload_idle_s = 1.0\n")
    )
    async with await _client(server) as client:
        job_id, decoded = await _job_and_image(client)
    image = decoded.encode()
    # Every byte of the image, but not the digest that is to follow it (trailer mode).
    raw = RawClient(server.host, server.port)
    raw.send_line(_header(job_id, len(image), None, owner="runner"))
    assert raw.read_reply() == {"return": {"accepting_bytes": len(image)}}
    raw.sock.sendall(image)
    await asyncio.sleep(0.3)
    if how == "reset":
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    # A trailer that never comes: the stall is refused by name and the connection closed.
    # (Until the server has seen the first connection end, its upload is still the job's.)
    for _ in range(200):
        stalled = RawClient(server.host, server.port)
        stalled.send_line(_header(job_id, 0, None, owner="runner"))
        go_ahead = stalled.read_reply()
        if go_ahead != {"exception": f"job {job_id} is already receiving an image"}:
            break
        stalled.close()
        await asyncio.sleep(0.05)
    try:
        assert go_ahead == {"return": {"accepting_bytes": 0}}
        reply = stalled.read_reply()
        assert reply is not None
        assert reply["exception"].startswith("no bytes came for 1 s after 0 of 64"), reply
        assert stalled.read_reply() is None  # closed: later bytes are never read as requests
    finally:
        stalled.close()
    async with await _client(server) as client:
        assert (await client.get_job_state(job_id)).state == 3  # the server goes on
        await _eventually_empty(server, job_id)
    assert server.is_running()
    assert "Traceback" not in server.stderr_text, server.stderr_text


async def test_a_digest_after_the_body_is_checked_like_one_in_the_header(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        job_id, decoded = await _job_and_image(client)
    image = decoded.encode()
    sha = hashlib.sha256(image).hexdigest()
    header = (
        json.dumps(
            {
                "command": "load_image",
                "args": [job_id],
                "kwargs": {"n_bytes": len(image), "owner": "runner"},
            }
        ).encode()
        + b"\n"
    )
    raw = RawClient(server.host, server.port)
    try:
        raw.send_line(header)
        assert raw.read_reply() == {"return": {"accepting_bytes": len(image)}}
        raw.sock.sendall(image + b"f" * 64)
        reply = raw.read_reply()
        assert reply == {
            "exception": f"the {len(image)} bytes received for job {job_id} have sha256 {sha},"
            f" not {'f' * 64} as announced"
        }
        await _eventually_empty(server, job_id)
        raw.send_line(header)
        assert raw.read_reply() == {"return": {"accepting_bytes": len(image)}}
        raw.sock.sendall(image + sha.encode())
        reply = raw.read_reply()
        assert reply is not None
        assert reply["return"]["sha256"] == sha
        # The stream stays framed: the next line is a request.
        assert raw.call("get_job_state", job_id)["state"] == 3
    finally:
        raw.close()
    assert (_job_folder(server, job_id) / "image.bin").read_bytes() == image


async def test_a_body_sent_before_the_go_ahead_closes_the_connection(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        job_id, decoded = await _job_and_image(client)
    image = decoded.encode()
    raw = RawClient(server.host, server.port)
    try:
        raw.send_line(_header(job_id, len(image), hashlib.sha256(image).hexdigest()) + image)
        assert raw.read_reply() == {
            "exception": "raw bytes were sent before the server's go-ahead; closing the connection"
        }
        assert raw.read_line() is None
    finally:
        raw.close()
    await _eventually_empty(server, job_id)


async def _eventually_empty(server: ServerProcess, job_id: int) -> None:
    for _ in range(200):
        if not [name for name in _leftovers(server, job_id) if name != "record.json"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"left behind: {_leftovers(server, job_id)}")


# --- crashes ------------------------------------------------------------------------------------


async def test_worker_killed_with_kill_9_fails_that_run_only(server: ServerProcess) -> None:
    async with await _client(server) as client:
        victim = await _ready_job(client)
        other = await _ready_job(client)
        maps = {}
        tokens = {}
        for info in (victim, other):
            maps[info["job_id"]] = map_network(_network(), allocation_from_machine_info(info))
            image = maps[info["job_id"]].image.encode()
            tokens[info["job_id"]] = (
                await client.load_image(info["job_id"], image, owner="runner")
            ).token
        victim_id, other_id = victim["job_id"], other["job_id"]
        await _until_running(client, victim_id, tokens[victim_id])
        line = server.wait_for_output(f"run 1 of job {victim_id} went to worker")
        pid = int(re.findall(r"went to worker (\d+)", line)[0])
        await client.start_run(other_id, tokens[other_id], 2000)
        os.kill(pid, signal.SIGKILL)
        failed = await client.wait_for_run(victim_id, tokens[victim_id], timeout_s=WAIT_S)
        assert failed.state is RunState.FAILED
        assert failed.reason == (
            f"the worker process running run 1 of job {victim_id} ended"
            " (killed by signal 9, SIGKILL)"
        )
        done = await client.wait_for_run(other_id, tokens[other_id], timeout_s=WAIT_S)
        assert done.state is RunState.DONE
        remote, _ = _decode(await client.fetch_results(other_id, tokens[other_id]))
        _assert_same(remote, _in_process(maps[other_id], 2000)[0])
        # The pool replaced the worker: the failed job runs again.
        again = await _run(client, victim_id, tokens[victim_id], 30)
        assert again.state is RunState.DONE


async def test_server_killed_during_a_run_then_restarted(start_server: Any) -> None:
    first: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(first) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 80)).state is RunState.DONE
        await _until_running(client, job_id, token)
    first.kill()
    # A state set aside by an image's load and not yet removed when the server died.
    aside = _job_folder(first, job_id) / "discarded-0123456789abcdef.tmp"
    aside.write_bytes(b"a replaced image's state")
    second = first.restarted()
    try:
        async with await _client(second) as client:
            status = await client.run_status(job_id, token)
            assert not aside.exists()
            assert status.state is RunState.FAILED
            assert status.reason == "the server restarted while run 2 was in flight"
            earlier, _ = _decode(await client.fetch_results(job_id, token))
            _assert_same(earlier, _in_process(mapped, 80)[0])
            # The image is still loaded and the state after run 1 is still there.
            assert (await _run(client, job_id, token, 40)).state is RunState.DONE
            continued, _ = _decode(await client.fetch_results(job_id, token))
        _assert_same(continued, _in_process(mapped, 120)[0])
    finally:
        await asyncio.to_thread(second.stop)


async def test_an_image_file_gone_before_its_record_said_so_is_no_image_after_a_restart(
    start_server: Any,
) -> None:
    # What a crash between a reset's removal of the files and its record left: a record
    # naming an image that is not there; the next run failed on a missing image.bin.
    first: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(first) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
    first.kill()
    (_job_folder(first, job_id) / "image.bin").unlink()
    second = first.restarted()
    try:
        async with await _client(second) as client:
            with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
                await client.start_run(job_id, token, 10)
            token = (await client.load_image(job_id, mapped.image.encode(), token=token)).token
            assert (await _run(client, job_id, token, 20)).state is RunState.DONE
            fresh, _ = _decode(await client.fetch_results(job_id, token))
        _assert_same(fresh, _in_process(mapped, 20)[0])
    finally:
        await asyncio.to_thread(second.stop)


async def test_a_load_cut_short_by_a_crash_leaves_a_job_with_no_image(start_server: Any) -> None:
    # What `install_image` leaves if the server dies before the new record is written: a
    # record naming no image, and an image file of the load that never answered.
    first: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(first) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
    first.kill()
    folder = _job_folder(first, job_id)
    record = JobFolderRecord.model_validate_json((folder / "record.json").read_bytes())
    # (a fresh load's interim record: no image, and no state of the image it replaces)
    interim = record.model_copy(update={"image": None, "is_state_saved": False, "state_step": 0})
    storage.write_record(folder.parent, interim)
    (folder / "image.bin").write_bytes(b"the bytes of a load that was never answered")
    second = first.restarted()
    try:
        async with await _client(second) as client:
            assert not (folder / "image.bin").exists()
            with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
                await client.start_run(job_id, token, 10)
            token = (await client.load_image(job_id, mapped.image.encode(), token=token)).token
            assert (await _run(client, job_id, token, 20)).state is RunState.DONE
            again, _ = _decode(await client.fetch_results(job_id, token))
        _assert_same(again, _in_process(mapped, 20)[0])
    finally:
        await asyncio.to_thread(second.stop)


def _failing_records(condition: str) -> str:
    """A server hook: a full disk, while the marker file exists, for the records that meet
    `condition` (a Python expression of `record`)."""
    return f"""\
import os

from allocator.dispatch import storage

_write_record = storage.write_record


def write_record(directory, record):
    if os.path.exists(os.environ["ALLOTMENT_TEST_FULL_DISK"]) and ({condition}):
        raise OSError(28, "No space left on device")
    return _write_record(directory, record)


storage.write_record = write_record
"""


_FAILING_DISK = _failing_records("record.image is not None")
_FAILING_RUN_END = _failing_records('record.runs and record.runs[-1].state == "done"')


def _hooked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook_source: str, variable: str
) -> Path:
    """Have the servers started from here run `hook_source` at start (as sitecustomize);
    the marker file whose presence `variable` names for it (absent: no fault)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(hook_source)
    marker = tmp_path / "fault-marker"
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv(variable, str(marker))
    return marker


async def test_a_load_whose_record_cannot_be_written_changes_nothing_it_answers(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A load told "could not be stored" used to take effect (its image ran, the previous
    # one was gone), and a first load's job was left with a token nobody got.
    full = _hooked(tmp_path, monkeypatch, _FAILING_DISK, "ALLOTMENT_TEST_FULL_DISK")
    server: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(server) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        other = map_network(
            _network(seed=5),
            allocation_from_machine_info(
                (await client.get_job_machine_info(job_id)).model_dump(mode="json")
            ),
        )
        full.touch()
        with pytest.raises(ServerError, match=f"image of job {job_id} could not be stored"):
            await client.load_image(job_id, other.image.encode(), token=token)
        full.unlink()
        # Not loaded: no image runs (the old one was replaced on disk), the token still holds.
        with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
            await client.start_run(job_id, token, 10)
        token = (await client.load_image(job_id, mapped.image.encode(), token=token)).token
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        # A first load that fails leaves the job to be loaded by its owner again.
        info = await _ready_job(client, keepalive_s=None)
        fresh = map_network(_network(), allocation_from_machine_info(info))
        full.touch()
        with pytest.raises(ServerError, match="could not be stored"):
            await client.load_image(info["job_id"], fresh.image.encode(), owner="runner")
        full.unlink()
        loaded = await client.load_image(info["job_id"], fresh.image.encode(), owner="runner")
        assert (await _run(client, info["job_id"], loaded.token, 20)).state is RunState.DONE
    said = server.stderr_text
    assert "Traceback" not in said, said
    assert "could not be stored: [Errno 28] No space left on device" in said


_SLOW_INSTALL = """\
import os
import time

from allocator.dispatch import storage

_install_image = storage.install_image


def install_image(directory, job_id, interim, upload):
    # A slow disk, while the marker file exists: the image takes a while to put in place.
    marker = os.environ["ALLOTMENT_TEST_SLOW_DISK"]
    if os.path.exists(marker):
        open(marker + ".installing", "w").close()
        time.sleep(1.0)
    return _install_image(directory, job_id, interim, upload)


storage.install_image = install_image
"""


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never came"
        time.sleep(0.01)


async def test_a_reset_while_an_image_is_stored_is_not_undone_by_the_load(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The load used to answer success and name its image in the job's record, while the
    # reset had removed the file: runs then failed on a missing image.bin.
    slow = _hooked(tmp_path, monkeypatch, _SLOW_INSTALL, "ALLOTMENT_TEST_SLOW_DISK")
    server: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(server) as client, await _client(server) as other:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        slow.touch()
        load = asyncio.create_task(client.load_image(job_id, mapped.image.encode(), token=token))
        await asyncio.to_thread(_wait_for_file, Path(f"{slow}.installing"))
        await other.power_on_job_boards(job_id)  # on while on: a reset
        with pytest.raises(ServerError, match=f"job {job_id}"):
            await load
        slow.unlink()
        while (await client.get_job_state(job_id)).state != 3:
            await client.receive_notification(timeout_s=WAIT_S)
        with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
            await client.start_run(job_id, token, 10)
        token = (await client.load_image(job_id, mapped.image.encode(), token=token)).token
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        fresh, _ = _decode(await client.fetch_results(job_id, token))
    _assert_same(fresh, _in_process(mapped, 20)[0])


async def test_a_run_whose_end_cannot_be_recorded_fails_and_claims_nothing(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its watchers were never told it ended, while run_status said done and fetch_results
    # handed out results the disk did not hold (a restart took them back).
    full = _hooked(tmp_path, monkeypatch, _FAILING_RUN_END, "ALLOTMENT_TEST_FULL_DISK")
    server: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(server) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        full.touch()
        status = await _run(client, job_id, token, 20)  # told, not left waiting
        assert status.state is RunState.FAILED
        assert status.reason == (
            "the end of run 2 could not be recorded (no space left on device); start it again"
        )
        earlier, _ = _decode(await client.fetch_results(job_id, token))
        _assert_same(earlier, _in_process(mapped, 20)[0])  # run 1's, as the disk holds
        full.unlink()
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        continued, _ = _decode(await client.fetch_results(job_id, token))
    _assert_same(continued, _in_process(mapped, 40)[0])


async def test_a_run_that_cannot_be_recorded_changes_nothing_and_a_full_disk_still_starts(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A start_run whose record could not be written used to leave the job "running" for
    # good (refusing runs and loads, stop_run hanging); a restart with the disk still full
    # exited with a traceback, since it rewrote every record.
    full = _hooked(tmp_path, monkeypatch, _FAILING_DISK, "ALLOTMENT_TEST_FULL_DISK")
    first: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(first) as client:
        job_id, mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        full.touch()
        with pytest.raises(ServerError, match=f"run 2 of job {job_id} could not be recorded"):
            await client.start_run(job_id, token, 10)
        status = await client.run_status(job_id, token)
        assert (status.run_id, status.state) == (1, RunState.DONE)
        await client.stop_run(job_id, token)  # nothing in flight: answered at once
    first.kill()
    second = first.restarted()  # the disk still full
    try:
        async with await _client(second) as client:
            assert (await client.run_status(job_id, token)).state is RunState.DONE
            full.unlink()
            assert (await _run(client, job_id, token, 20)).state is RunState.DONE
            continued, _ = _decode(await client.fetch_results(job_id, token))
        _assert_same(continued, _in_process(mapped, 40)[0])
    finally:
        await asyncio.to_thread(second.stop)
    said = second.stderr_text
    assert "Traceback" not in said, said


async def test_a_server_stopped_during_a_run_stops_cleanly(start_server: Any) -> None:
    server: ServerProcess = start_server(config_text=DISPATCH_TOML)
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client, keepalive_s=None)
        assert (await _run(client, job_id, token, 20)).state is RunState.DONE
        await _until_running(client, job_id, token)
        server.send_signal(signal.SIGTERM)
        for _ in range(600):
            if not server.is_running():
                break
            await asyncio.sleep(0.05)
    assert await asyncio.to_thread(server.stop) == 0  # ended by itself: no second signal
    said = server.stderr_text
    for unwanted in ("Traceback", "RuntimeWarning", "never awaited", "WARNING allotment.dispatch"):
        assert unwanted not in said, said


def test_a_run_that_fails_raises_with_the_servers_reason(server: ServerProcess) -> None:
    with RemoteMachine.allocate(
        server.host, server.port, owner="runner", keepalive_s=60.0
    ) as machine:
        mapped = map_network(_network(), machine.topology)
        machine.load(mapped.image)

        async def destroy() -> None:
            async with await _client(server) as client:
                await asyncio.sleep(1.0)
                await client.destroy_job(machine.job_id, "operator")

        killer = threading.Thread(target=lambda: asyncio.run(destroy()))
        killer.start()
        with pytest.raises(RemoteRunError, match=f"job {machine.job_id} was destroyed: operator"):
            machine.run(LONG_RUN_STEPS)
        killer.join()


# --- the client on both backends, metrics, events -----------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_client_dispatch_calls_on_asyncio_and_trio(server: ServerProcess, backend: str) -> None:
    async def scenario() -> tuple[MappedNetwork, bytes, list[int]]:
        async with await AllotmentClient.connect(
            server.host, server.port, timeout_s=WAIT_S
        ) as client:
            info = await _ready_job(client)
            job_id = info["job_id"]
            mapped = map_network(_network(seed=7), allocation_from_machine_info(info))
            token = (await client.load_image(job_id, mapped.image.encode(), owner="runner")).token
            seen: list[int] = []
            await client.start_run(job_id, token, 200)
            status = await client.wait_for_run(
                job_id, token, progress=lambda s: seen.append(s.steps_done), timeout_s=WAIT_S
            )
            assert status.state is RunState.DONE
            index = await client.fetch_results(job_id, token, "index")
            core = next(iter(mapped.cores_of(mapped.network.populations[1])))[1]
            spikes = await client.fetch_results(job_id, token, f"spikes/{core.x},{core.y},{core.p}")
            await client.destroy_job(job_id)
            assert index.startswith(b"ALLOTRES")
            return mapped, spikes, seen

    mapped, spikes, seen = anyio.run(scenario, backend=backend)
    assert seen[-1] == 200
    (local,) = _in_process(mapped, 200)
    core = next(iter(mapped.cores_of(mapped.network.populations[1])))[1]
    assert spikes == local.spikes[core].astype("<i8").tobytes()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_metrics_and_mqtt_events_follow_a_run(start_server: Any, mqtt_broker: Any) -> None:
    import aiomqtt
    from prometheus_client.parser import text_string_to_metric_families

    prefix = f"allotment-test-{os.getpid()}-{id(start_server) % 10000}"
    metrics_port = _free_port()
    config = DISPATCH_TOML + (
        f'\n[metrics]\naddress = "127.0.0.1"\nport = {metrics_port}\n'
        f'\n[mqtt]\nurl = "mqtt://{mqtt_broker.host}:{mqtt_broker.port}"\n'
        f'topic_prefix = "{prefix}"\n'
    )
    server: ServerProcess = await asyncio.to_thread(start_server, config_text=config)
    events: list[dict[str, Any]] = []

    async def collect() -> None:
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as sub:
            await sub.subscribe(f"{prefix}/+/jobs/+/run", qos=1)
            subscribed.set()
            async for message in sub.messages:
                events.append(json.loads(bytes(message.payload)))
                if events[-1]["state"] == "done":
                    return

    subscribed = asyncio.Event()
    async with asyncio.timeout(WAIT_S):
        collector = asyncio.create_task(collect())
        await subscribed.wait()
        async with await _client(server) as client:
            job_id, _mapped, token = await _loaded_job(client)
            assert (await _run(client, job_id, token, 300)).state is RunState.DONE
        await collector
    states = [e["state"] for e in events if e["job_id"] == job_id]
    assert states[0] == "queued"
    assert "running" in states
    assert states[-1] == "done"
    assert events[-1]["steps_done"] == 300
    assert events[-1]["machine"] == "spinn-1200"

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {
            s.name + str(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    samples = await asyncio.to_thread(scrape)
    assert samples["allotment_runs_total[('outcome', 'done')]"] == 1.0
    assert samples["allotment_runs_queued[]"] == 0.0
    assert samples["allotment_runs_running[]"] == 0.0
    assert samples["allotment_worker_crashes_total[]"] == 0.0
    assert samples["allotment_image_upload_bytes_total[]"] > 0
    await asyncio.to_thread(server.stop)


async def test_runs_past_their_limits_fail_with_the_limit_named(start_server: Any) -> None:
    limits = "[dispatch]\nrun_wall_s = 2.0\n"
    server: ServerProcess = await asyncio.to_thread(
        start_server, config_text=DISPATCH_TOML.replace("[dispatch]\n", limits)
    )
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await client.start_run(job_id, token, LONG_RUN_STEPS)
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
    assert status.state is RunState.FAILED
    assert status.reason == f"run 1 of job {job_id} passed the wall-time limit of 2 s"
    await asyncio.to_thread(server.stop)
    tiny = "[dispatch]\nrun_memory_bytes = 67108864\n"
    server = await asyncio.to_thread(
        start_server, config_text=DISPATCH_TOML.replace("[dispatch]\n", tiny)
    )
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await client.start_run(job_id, token, LONG_RUN_STEPS)
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
    assert status.state is RunState.FAILED
    assert status.reason is not None
    assert re.fullmatch(
        rf"run 1 of job {job_id} used \d+ bytes of memory, over the limit of 67108864 bytes",
        status.reason,
    )


async def test_reset_stops_the_run_and_drops_the_image(server: ServerProcess) -> None:
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await _until_running(client, job_id, token)
        await client.power_on_job_boards(job_id)  # on while on: a reset
        status = await client.wait_for_run(job_id, token, timeout_s=WAIT_S)
    assert status.state is RunState.STOPPED
    assert status.reason == (f"job {job_id}'s boards were reset; the image is gone, load it again")


async def test_a_keep_state_load_after_a_reset_is_refused_naming_the_reset(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        job_id, mapped, token = await _loaded_job(client)
        assert (await _run(client, job_id, token, 40)).state is RunState.DONE
        await _until_running(client, job_id, token)
        await client.power_on_job_boards(job_id)  # on while on: a reset
        assert (await client.wait_for_run(job_id, token, timeout_s=WAIT_S)).state is (
            RunState.STOPPED
        )
        while (await client.get_job_state(job_id)).state != 3:
            await client.receive_notification(timeout_s=WAIT_S)
        image = mapped.image.encode()
        with pytest.raises(ServerError) as refused:
            await client.load_image(job_id, image, token=token, keep_state=True)
        assert str(refused.value) == (
            f"image for job {job_id} cannot take over the running state: job {job_id}'s"
            " boards were reset since its last run, and the state went with them"
        )
        with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
            await client.start_run(job_id, token, 10)
        # Loaded again without keep_state, the job runs from the image.
        assert (await client.load_image(job_id, image, token=token)).state_step == 0
        assert (await _run(client, job_id, token, 30)).state is RunState.DONE
        remote, _ = _decode(await client.fetch_results(job_id, token))
    _assert_same(remote, _in_process(mapped, 30)[0])


async def test_a_runs_first_notification_follows_the_reply_to_start_run(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
    raw = RawClient(server.host, server.port)
    try:
        line = {"command": "start_run", "args": [job_id, token, 30], "kwargs": {"notify": True}}
        raw.send_line(json.dumps(line).encode() + b"\n")
        first = raw.read_line()
        assert first is not None
        assert "return" in json.loads(first), first  # the reply first, then its notifications
        while json.loads(raw.read_line() or b"{}")["run_progress"]["state"] != "done":
            pass
    finally:
        raw.close()


async def test_runs_queue_for_the_workers_with_their_position_visible(
    server: ServerProcess,
) -> None:
    async with await _client(server) as client:
        jobs = [await _loaded_job(client) for _ in range(3)]
        for job_id, _, token in jobs[:2]:
            await client.start_run(job_id, token, LONG_RUN_STEPS)
        # Two workers: two runs go at once (once the workers are up) ...
        for job_id, _, token in jobs[:2]:
            while (await client.run_status(job_id, token)).state is not RunState.RUNNING:
                await client.receive_notification(timeout_s=WAIT_S)
        # ... and the third waits, first in the queue.
        third = await client.start_run(jobs[2][0], jobs[2][2], LONG_RUN_STEPS)
        assert (third.state, third.queue_position) == (RunState.QUEUED, 0)
        first_id, _, first_token = jobs[0]
        await client.stop_run(first_id, first_token)
        third_id, _, third_token = jobs[2]
        while (await client.run_status(third_id, third_token)).state is RunState.QUEUED:
            await client.receive_notification(timeout_s=WAIT_S)
        assert (await client.run_status(third_id, third_token)).queue_position is None
        for job_id, _, token in jobs[1:]:
            stopped = await client.stop_run(job_id, token)
            assert stopped.state is RunState.STOPPED


def test_a_lost_server_raises_a_toolchain_error_and_never_hangs(start_server: Any) -> None:
    from toolchain.errors import RemoteError

    server: ServerProcess = start_server(config_text=DISPATCH_TOML)
    machine = RemoteMachine.allocate(server.host, server.port, owner="runner")
    try:
        machine.load(map_network(_network(), machine.topology).image)
        killer = threading.Timer(1.0, server.kill)
        killer.start()
        with pytest.raises(RemoteError, match=f"server {server.host}:{server.port}"):
            machine.run(LONG_RUN_STEPS)
        killer.join()
        with pytest.raises(RemoteError):
            machine.results()
    finally:
        machine.close()


async def test_results_outlive_the_job_by_the_grace_time_only(
    server: ServerProcess, start_server: Any
) -> None:
    # The module's server keeps nothing after a job ends (grace 0).
    async with await _client(server) as client:
        job_id, _mapped, token = await _loaded_job(client)
        await _run(client, job_id, token, 20)
        await client.destroy_job(job_id)
        await _eventually_gone(_job_folder(server, job_id))
        with pytest.raises(ServerError, match=f"job {job_id} has no image loaded"):
            await client.fetch_results(job_id, token)
    # With a grace time the results are still there after the destroy, the image is not.
    kept: ServerProcess = await asyncio.to_thread(
        start_server,
        config_text=DISPATCH_TOML.replace("results_grace_s = 0.0", "results_grace_s = 600.0"),
    )
    async with await _client(kept) as client:
        job_id, mapped, token = await _loaded_job(client)
        await _run(client, job_id, token, 20)
        await client.destroy_job(job_id)
        await client.get_job_state(job_id)
        remote, _ = _decode(await client.fetch_results(job_id, token))
        with pytest.raises(ServerError, match=f"job {job_id} was destroyed"):
            await client.start_run(job_id, token, 10)
    _assert_same(remote, _in_process(mapped, 20)[0])
    await _eventually_gone(_job_folder(kept, job_id) / "image.bin")
    await asyncio.to_thread(kept.stop)


async def _eventually_gone(path: Path) -> None:
    for _ in range(200):
        if not await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} is still there")


def test_an_unusable_dispatch_directory_stops_the_start_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.e2e.conftest import REPO_ROOT, write_server_config

    (tmp_path / "blocker").write_text("a file, not a folder")
    config = write_server_config(
        tmp_path, DISPATCH_TOML.replace("[dispatch]\n", '[dispatch]\ndirectory = "blocker/sub"\n')
    )
    result = subprocess.run(
        [sys.executable, "-m", "allocator.cli", "serve", "--port", "0", "--config", str(config),
         "--db", f"sqlite:///{tmp_path / 'a.db'}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot start: dispatch directory blocker/sub" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(180)
async def test_a_client_waiting_for_its_runs_progress_is_never_idle(tmp_path: Path) -> None:
    # With idle_timeout_s a connection that sends nothing is closed; one that waits for
    # the progress of a run it started is waiting for the server, not idle.
    from tests.e2e.conftest import write_server_config

    toml = DISPATCH_TOML.replace("[server]\n", "[server]\nidle_timeout_s = 1.0\n")
    server = ServerProcess(
        write_server_config(tmp_path, toml), f"sqlite:///{tmp_path / 'a.db'}", tmp_path
    )
    server.start()
    try:
        async with await _client(server) as client:
            job_id, image = await _job_and_image(client)
            await client.no_notify_job(job_id)  # watching the job would keep it from idling
            token = (await client.load_image(job_id, image.encode(), owner="runner")).token
            await client.start_run(job_id, token, LONG_RUN_STEPS)
            waited_until = time.monotonic() + 3.0  # three idle timeouts
            n_progress = 0
            while time.monotonic() < waited_until:
                with contextlib.suppress(TimeoutError):
                    notification = await client.receive_notification(timeout_s=0.5)
                    n_progress += hasattr(notification, "run_progress")
            assert n_progress > 0
            status = await client.stop_run(job_id, token)
            assert status.job_id == job_id
    finally:
        server.stop()
