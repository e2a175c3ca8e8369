"""The worker's preload (an upload validated and decoded ahead of its run, used for that run),
a keep-state load's hand-over (it continues the state on the new image, or refuses another
layout) and its warm-up (a pool started with the server has its workers' kernels loaded
before any run)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import pickle
from pathlib import Path

import pytest

from allocator.dispatch.pool import WorkerPool
from allocator.dispatch.storage import IMAGE_FILE, RESULTS_FILE, STATE_FILE, ImageInfo
from allocator.dispatch.topology import TopologySpec
from allocator.dispatch.worker import PreloadOrder, RunOrder, WorkerMessage, _Preloaded, _run
from machine_models import Executor, Image
from machine_models.errors import ExecutionError
from machine_models.geometry import ChipXY
from machine_models.results_file import decode_results, join_results
from toolchain import IFCurrExp, Network, OneToOne, SpikeSourcePoisson, StaticSynapse, map_network
from toolchain.allocation import virtual_allocation

ONE_BOARD = TopologySpec(width_chips=8, height_chips=8, ethernet_chips=((0, 0),))


def _image_file(
    tmp_path: Path, *, n: int = 50, rate_hz: float = 80.0, name: str = "upload.tmp"
) -> tuple[Path, str, bytes]:
    net = Network(dt_ms=1.0, seed=5)
    drive = net.population(n, SpikeSourcePoisson(rate=rate_hz), "drive")
    cells = net.population(n, IFCurrExp(), "cells")
    net.project(drive, cells, OneToOne(), StaticSynapse(weight=2.0, delay=1.0))
    cells.record("spikes")
    data = map_network(net, virtual_allocation(1)).image.encode()
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), data


def _preload(path: Path, sha256: str) -> tuple[_Preloaded, list[WorkerMessage]]:
    """A preload of the file at `path` and the verdicts it answered."""
    preloaded = _Preloaded()
    answers: list[WorkerMessage] = []
    preloaded.load(PreloadOrder(path=str(path), sha256=sha256, topology=ONE_BOARD), answers.append)
    return preloaded, answers


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
    preloaded, answers = _preload(path, digest)
    image = Image.decode(data)
    assert answers == [
        WorkerMessage(
            kind="valid",
            image=ImageInfo(
                sha256=digest,
                n_bytes=len(data),
                n_cores=len(image.cores),
                n_chips=len({core.chip for core in image.cores} | set(image.tables)),
                timestep_us=image.timestep_us,
            ),
        )
    ]
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
    preloaded, _ = _preload(path, digest)
    assert preloaded.take(order) is None
    assert preloaded.take(_order(digest)) is None  # dropped, not kept for later


@pytest.mark.parametrize("cut", [0, 10, -7], ids=["empty", "header only", "truncated"])
def test_a_preload_of_a_malformed_upload_keeps_nothing(tmp_path: Path, cut: int) -> None:
    path, digest, data = _image_file(tmp_path)
    path.write_bytes(data[:cut])
    preloaded, answers = _preload(path, digest)
    assert [a.kind for a in answers] == ["invalid"]
    assert (answers[0].reason or "").startswith("malformed image: ")
    assert preloaded.take(_order(digest)) is None


def test_an_image_that_does_not_fit_is_invalid_naming_the_chip_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    path, _, data = _image_file(tmp_path)
    image = Image.decode(data)
    moved = dataclasses.replace(
        image, cores=(dataclasses.replace(image.cores[0], chip=ChipXY(9, 2)), *image.cores[1:])
    ).encode()
    path.write_bytes(moved)
    digest = hashlib.sha256(moved).hexdigest()
    preloaded, answers = _preload(path, digest)
    assert answers == [
        WorkerMessage(kind="invalid", reason="chip (9, 2) is not on the allocated boards")
    ]
    assert preloaded.take(_order(digest)) is None


def test_a_preload_of_a_file_that_is_gone_is_unchecked_and_keeps_nothing(tmp_path: Path) -> None:
    preloaded, answers = _preload(tmp_path / "gone", "0" * 64)
    assert [a.kind for a in answers] == ["unchecked"]
    assert "No such file" in (answers[0].reason or "")
    assert preloaded.take(_order("0" * 64)) is None


def _first_run(tmp_path: Path) -> bytes:
    """Run 1 of the standard image, 60 steps, in the job folder ``tmp_path``; its image."""
    _, _, data = _image_file(tmp_path, name=IMAGE_FILE)
    _run(_order(None, folder=str(tmp_path), n_steps=60), io.BytesIO(), _Preloaded())
    return data


def _hand_over(tmp_path: Path, digest: str, path: Path) -> RunOrder:
    return _order(
        digest,
        folder=str(tmp_path),
        n_steps=0,
        is_fresh=False,
        previous_snapshot="snap-1",
        snapshot="snap-1-kept",
        new_image=str(path),
    )


def test_a_hand_over_continues_the_state_on_the_preloaded_new_image(tmp_path: Path) -> None:
    data = _first_run(tmp_path)
    path, digest, new_data = _image_file(tmp_path, rate_hz=150.0)
    preloaded, _ = _preload(path, digest)
    path.unlink()  # only the preload can build the new image's executor now
    out = io.BytesIO()
    _run(_hand_over(tmp_path, digest, path), out, preloaded)
    kinds = [json.loads(line)["kind"] for line in out.getvalue().splitlines()]
    assert kinds == ["started", "done", "saved"]
    with (tmp_path / "snap-1-kept" / STATE_FILE).open("rb") as f:
        handed_over = pickle.load(f)
    assert handed_over.step == 60
    assert handed_over.image == Image.decode(new_data)
    kept = (tmp_path / "snap-1-kept" / RESULTS_FILE).read_bytes()
    assert kept == (tmp_path / "snap-1" / RESULTS_FILE).read_bytes(), "the results so far"
    old = Executor(Image.decode(data), ONE_BOARD.build())
    before = old.run(60)
    new = Executor(Image.decode(new_data), ONE_BOARD.build())
    new.adopt_state(old)
    expected = join_results([before, new.run(40)])
    _run(
        _order(
            None,
            run_id=2,
            folder=str(tmp_path),
            n_steps=40,
            is_fresh=False,
            previous_snapshot="snap-1-kept",
            snapshot="snap-2",
        ),
        io.BytesIO(),
        _Preloaded(),
    )
    remote, _ = decode_results((tmp_path / "snap-2" / RESULTS_FILE).read_bytes())
    assert sum(len(s) for s in expected.spikes.values()) > 0
    for core, spikes in expected.spikes.items():
        assert remote.spikes[core].tobytes() == spikes.tobytes(), core


def test_a_hand_over_to_another_layout_fails_naming_it_and_writes_nothing(
    tmp_path: Path,
) -> None:
    _first_run(tmp_path)
    path, digest, _ = _image_file(tmp_path, n=70)
    out = io.BytesIO()
    with pytest.raises(
        ExecutionError,
        match=r"another layout: core \(0, 0, 2\) holds other neurons"
        r" \(base and count \[0, 50\], now \[0, 70\]\)",
    ):
        _run(_hand_over(tmp_path, digest, path), out, _Preloaded())
    assert not (tmp_path / "snap-1-kept").exists()
    assert (tmp_path / "snap-1" / STATE_FILE).exists()


async def test_workers_started_with_the_server_report_their_kernels_loaded() -> None:
    pool = WorkerPool(2, memory_bytes=1 << 32, wall_s=60.0, is_starting_with_server=True)
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(pool.run())
        assert pool.n_warmed == 0
        await pool.wait_warmed()
        assert pool.n_warmed == 2
        assert len(pool.worker_pids) == 2
        running.cancel()
