"""Uploads validated by the worker pool: a verdict from a worker process of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from allocator.dispatch.pool import WorkerPool
from allocator.dispatch.topology import TopologySpec
from allocator.dispatch.worker import PreloadOrder, WorkerMessage
from machine_models import Image
from machine_models.geometry import ChipXY
from toolchain import IFCurrExp, Network, OneToOne, SpikeSourcePoisson, StaticSynapse, map_network
from toolchain.allocation import virtual_allocation

ONE_BOARD = TopologySpec(width_chips=8, height_chips=8, ethernet_chips=((0, 0),))
WAIT_S = 60.0

pytestmark = pytest.mark.timeout(120)


def _image() -> Image:
    net = Network(dt_ms=1.0, seed=5)
    drive = net.population(50, SpikeSourcePoisson(rate=80.0), "drive")
    cells = net.population(50, IFCurrExp(), "cells")
    net.project(drive, cells, OneToOne(), StaticSynapse(weight=2.0, delay=1.0))
    return map_network(net, virtual_allocation(1)).image


def _upload(tmp_path: Path, image: Image) -> PreloadOrder:
    data = image.encode()
    path = tmp_path / "upload-1.tmp"
    path.write_bytes(data)
    return PreloadOrder(path=str(path), sha256=hashlib.sha256(data).hexdigest(), topology=ONE_BOARD)


@asynccontextmanager
async def _pool(command: Sequence[str] | None = None) -> AsyncIterator[WorkerPool]:
    """A running pool of one worker that has said it is ready and has loaded its kernels
    (a preload goes to such a worker only)."""
    pool = WorkerPool(1, memory_bytes=1 << 34, wall_s=60.0, command=command)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(pool.run())
        await asyncio.sleep(0)  # the pool's task group is up
        pool.prepare()
        async with asyncio.timeout(WAIT_S):
            await pool.has_started.wait()
            await pool.wait_warmed()
        try:
            yield pool
        finally:
            task.cancel()


async def _verdict(pool: WorkerPool, order: PreloadOrder) -> WorkerMessage:
    verdict = pool.preload(order)
    assert verdict is not None, "the worker is idle"
    async with asyncio.timeout(WAIT_S):
        return await verdict


def test_a_worker_validates_an_upload_and_answers_what_it_holds(tmp_path: Path) -> None:
    image = _image()
    order = _upload(tmp_path, image)

    async def scenario() -> WorkerMessage:
        async with _pool() as pool:
            return await _verdict(pool, order)

    verdict = asyncio.run(scenario())
    assert verdict.kind == "valid"
    assert verdict.image is not None
    assert verdict.image.sha256 == order.sha256
    assert verdict.image.n_bytes == Path(order.path).stat().st_size
    assert verdict.image.n_cores == len(image.cores)


def test_a_worker_refuses_an_image_that_does_not_fit_naming_the_chip(tmp_path: Path) -> None:
    image = _image()
    moved = dataclasses.replace(
        image, cores=(dataclasses.replace(image.cores[0], chip=ChipXY(9, 2)), *image.cores[1:])
    )
    order = _upload(tmp_path, moved)

    async def scenario() -> WorkerMessage:
        async with _pool() as pool:
            return await _verdict(pool, order)

    assert asyncio.run(scenario()) == WorkerMessage(
        kind="invalid", reason="chip (9, 2) is not on the allocated boards"
    )


def test_a_worker_that_ends_while_validating_leaves_the_upload_unchecked(tmp_path: Path) -> None:
    order = _upload(tmp_path, _image())
    # A worker that says it is ready, takes the order and exits.
    fake = (
        sys.executable,
        "-c",
        'import sys; print(\'{"kind": "ready"}\', flush=True);'
        ' print(\'{"kind": "warmed"}\', flush=True); sys.stdin.readline(); sys.exit(3)',
    )

    async def scenario() -> WorkerMessage:
        async with _pool(fake) as pool:
            return await _verdict(pool, order)

    verdict = asyncio.run(scenario())
    assert verdict.kind == "unchecked"
    assert verdict.reason == "the worker validating it ended (exit code 3)"


def test_a_worker_building_a_preload_takes_no_second_one(tmp_path: Path) -> None:
    order = _upload(tmp_path, _image())
    info = {"sha256": order.sha256, "n_bytes": 1, "n_cores": 1, "n_chips": 1, "timestep_us": 1}
    # A worker that answers its verdict and then stays busy building (it never says
    # "preloaded" until its standard input closes).
    fake = (
        sys.executable,
        "-c",
        "import json, sys\n"
        "print(json.dumps({'kind': 'ready'}), flush=True)\n"
        "print(json.dumps({'kind': 'warmed'}), flush=True)\n"
        "sys.stdin.readline()\n"
        f"print(json.dumps({{'kind': 'valid', 'image': {info!r}}}), flush=True)\n"
        "sys.stdin.read()\n",
    )

    async def scenario() -> tuple[WorkerMessage, bool]:
        async with _pool(fake) as pool:
            verdict = await _verdict(pool, order)
            return verdict, pool.preload(order) is None

    verdict, is_refused = asyncio.run(scenario())
    assert verdict.kind == "valid"
    assert verdict.image is not None
    assert verdict.image.sha256 == order.sha256
    assert is_refused


def test_a_worker_still_loading_its_kernels_gets_no_preload(tmp_path: Path) -> None:
    order = _upload(tmp_path, _image())
    # Ready, but its kernels still loading (it never says "warmed").
    fake = (
        sys.executable,
        "-c",
        'import sys; print(\'{"kind": "ready"}\', flush=True); sys.stdin.read()',
    )

    async def scenario() -> bool:
        pool = WorkerPool(1, memory_bytes=1 << 34, wall_s=60.0, command=fake)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(pool.run())
            await asyncio.sleep(0)
            pool.prepare()
            async with asyncio.timeout(WAIT_S):
                await pool.has_started.wait()
            refused = pool.preload(order) is None
            task.cancel()
        return refused

    assert asyncio.run(scenario())
