"""The worker's preload (an upload decoded ahead of its run is used only for its own image) and
its warm-up (a pool started with the server has its workers' kernels loaded before any run)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from allocator.dispatch.pool import WorkerPool
from allocator.dispatch.topology import TopologySpec
from allocator.dispatch.worker import PreloadOrder, RunOrder, _Preloaded
from machine_models import Executor, Image
from toolchain import IFCurrExp, Network, OneToOne, SpikeSourcePoisson, StaticSynapse, map_network
from toolchain.allocation import virtual_allocation

ONE_BOARD = TopologySpec(width_chips=8, height_chips=8, ethernet_chips=((0, 0),))


def _image_file(tmp_path: Path) -> tuple[Path, str, bytes]:
    net = Network(dt_ms=1.0, seed=5)
    drive = net.population(50, SpikeSourcePoisson(rate=80.0), "drive")
    cells = net.population(50, IFCurrExp(), "cells")
    net.project(drive, cells, OneToOne(), StaticSynapse(weight=2.0, delay=1.0))
    cells.record("spikes")
    data = map_network(net, virtual_allocation(1)).image.encode()
    path = tmp_path / "upload.tmp"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), data


def _order(sha256: str | None, topology: TopologySpec = ONE_BOARD, **kw: object) -> RunOrder:
    fields: dict[str, object] = {
        "run_id": 1,
        "job_id": 7,
        "folder": "unused",
        "topology": topology,
        "n_steps": 100,
        "is_fresh": True,
        "previous_snapshot": None,
        "snapshot": "snap-1",
        "image_sha256": sha256,
    }
    fields.update(kw)
    return RunOrder.model_validate(fields)


def test_a_preloaded_executor_runs_as_one_built_from_the_image_and_is_taken_once(
    tmp_path: Path,
) -> None:
    path, digest, data = _image_file(tmp_path)
    preloaded = _Preloaded()
    preloaded.load(PreloadOrder(path=str(path), sha256=digest, topology=ONE_BOARD))
    path.unlink()  # the server renames the upload into place: the preload no longer needs it
    executor = preloaded.take(_order(digest))
    assert executor is not None
    assert preloaded.take(_order(digest)) is None
    local = Executor(Image.decode(data), ONE_BOARD.build()).run(100)
    remote = executor.run(100)
    assert sum(len(s) for s in local.spikes.values()) > 0
    assert remote.spikes.keys() == local.spikes.keys()
    for core, spikes in local.spikes.items():
        assert remote.spikes[core].tobytes() == spikes.tobytes(), core


@pytest.mark.parametrize(
    "order",
    [
        _order("0" * 64),
        _order(None),
        _order(None, topology=ONE_BOARD.model_copy(update={"dead_chips": ((1, 1),)})),
    ],
    ids=["another image", "no digest", "another network"],
)
def test_a_preload_of_another_image_or_network_is_dropped(tmp_path: Path, order: RunOrder) -> None:
    path, digest, _ = _image_file(tmp_path)
    if order.image_sha256 is None and order.topology != ONE_BOARD:
        order = order.model_copy(update={"image_sha256": digest})
    preloaded = _Preloaded()
    preloaded.load(PreloadOrder(path=str(path), sha256=digest, topology=ONE_BOARD))
    assert preloaded.take(order) is None
    assert preloaded.take(_order(digest)) is None  # dropped, not kept for later


@pytest.mark.parametrize("cut", [0, 10, -7], ids=["empty", "header only", "truncated"])
def test_a_preload_of_a_malformed_upload_keeps_nothing(tmp_path: Path, cut: int) -> None:
    path, digest, data = _image_file(tmp_path)
    path.write_bytes(data[:cut])
    preloaded = _Preloaded()
    preloaded.load(PreloadOrder(path=str(path), sha256=digest, topology=ONE_BOARD))
    assert preloaded.take(_order(digest)) is None


def test_a_preload_of_a_file_that_is_gone_keeps_nothing(tmp_path: Path) -> None:
    preloaded = _Preloaded()
    preloaded.load(PreloadOrder(path=str(tmp_path / "gone"), sha256="0" * 64, topology=ONE_BOARD))
    assert preloaded.take(_order("0" * 64)) is None


async def test_workers_started_with_the_server_report_their_kernels_loaded() -> None:
    pool = WorkerPool(2, memory_bytes=1 << 32, wall_s=60.0, is_starting_with_server=True)
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(pool.run())
        assert pool.n_warmed == 0
        await pool.wait_warmed()
        assert pool.n_warmed == 2
        assert len(pool.worker_pids) == 2
        running.cancel()
