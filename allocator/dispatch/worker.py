"""A worker process: runs jobs' images on the chip model, one run at a time, for the server.

The server starts ``python -m allocator.dispatch.worker`` and talks to it over its standard
streams, one JSON line each way (`RunOrder` in, `WorkerMessage` out)::

    worker: {"kind": "ready"}
    worker: {"kind": "warmed"}                         the chip model's kernels are loaded
    server: {"run_id": 3, "job_id": 7, "folder": ..., "n_steps": 10000, ...}
    worker: {"kind": "started", "first_step": 200}
    worker: {"kind": "progress", "steps_done": 100}  ... (about four a second)
    worker: {"kind": "done", "steps_done": 10000}      results written: the run is over
    worker: {"kind": "saved"}                          the executor's state is on disk too
    (or)    {"kind": "failed", "reason": "core (0, 0, 3): region 2 is missing"}

Before a fresh run, the server may send a `PreloadOrder` for an upload whose bytes it has
received and hashed: the worker decodes and validates it (the server's process does no
CPU-heavy work for an upload), answers the verdict, and then builds the executor from the
same decoded image, keeping that one executor for the next fresh run of an image with the
same digest on the same network::

    server: {"kind": "preload", "path": ".../upload-1f.tmp", "sha256": ..., "topology": ...}
    worker: {"kind": "valid", "image": {"n_cores": 96, ...}}   (or)
            {"kind": "invalid", "reason": "chip (9, 2) is not on the allocated boards"}
            {"kind": "unchecked", "reason": "..."}     the file could not be read: the
                                                       server validates it itself
    worker: {"kind": "preloaded"}                      done with the order (after any verdict)

The executor is only a cache: a run that finds no match (the image was rejected, replaced,
or the file was gone) decodes the image file as before.

A load that keeps the state (``load_image`` with ``keep_state``) is a continuation of no
steps onto the new image, before the server accepts it: the worker builds the new image's
executor (the preloaded one, when it has it), hands it the state the previous run pickled
(`Executor.adopt_state`, which refuses another layout, naming what differs), and saves it
and the results so far as a snapshot of their own; the next run continues from there.

Once ready, the worker runs a tiny image a few steps (`machine_models.warmup`), on one thread:
numba loads the compiled kernels (from its cache) on their first call, and that had better
happen before the first run than in it. Orders that come meanwhile wait in the pipe; a
warm-up that fails is logged and changes nothing else.

The run goes in chunks so that progress can be reported; consecutive runs of the executor
give the same results as one long run, so the chunks change nothing. A continuation starts
from the state the previous run pickled; a fresh run decodes the image again. The state is
saved after "done", so the job runner can fetch its results while the worker still writes.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from allocator.dispatch.storage import IMAGE_FILE, RESULTS_FILE, STATE_FILE, ImageInfo
from allocator.dispatch.topology import TopologySpec
from allocator.dispatch.validation import decode_file, validated
from allocator.logoutput import ServerFormatter
from machine_models.errors import MachineModelError
from machine_models.executor import Executor, Results
from machine_models.results_file import decode_results, encode_results, join_results
from machine_models.warmup import warm_kernels

__all__ = ["PreloadOrder", "RunOrder", "WorkerMessage", "main"]

log = logging.getLogger("allotment.dispatch.worker")

_CHUNK_S: Final = 0.25
"""Wall time a chunk of steps aims at: progress about four times a second."""
_FIRST_CHUNK_STEPS: Final = 20


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunOrder(_Frozen):
    """What the server asks a worker to run."""

    run_id: int
    job_id: int
    folder: str
    topology: TopologySpec
    n_steps: int
    is_fresh: bool
    previous_snapshot: str | None
    snapshot: str
    image_sha256: str | None = None
    """The digest of the job's image, to match a preloaded executor (fresh runs)."""
    new_image: str | None = None
    """An image file the state goes on in (a keep-state load, not yet the job's image)."""


class PreloadOrder(_Frozen):
    """An upload to decode ahead of its run (see the module docstring)."""

    kind: Literal["preload"] = "preload"
    path: str
    sha256: str
    topology: TopologySpec


class WorkerMessage(_Frozen):
    """What a worker tells the server."""

    kind: Literal[
        "ready",
        "warmed",
        "started",
        "progress",
        "done",
        "saved",
        "failed",
        "valid",
        "invalid",
        "unchecked",
        "preloaded",
    ]
    steps_done: int = 0
    first_step: int = 0
    reason: str | None = None
    image: ImageInfo | None = None
    """What a valid upload holds (``valid`` only)."""


_ORDERS: Final = TypeAdapter(RunOrder | PreloadOrder)


class _RunFailed(Exception):
    """The run cannot go on; the message is for the job runner."""


def _send(out: IO[bytes], message: WorkerMessage) -> None:
    out.write(message.model_dump_json().encode() + b"\n")
    out.flush()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)


class _Preloaded:
    """The one executor built ahead of its run, and what it was built from."""

    def __init__(self) -> None:
        self._key: tuple[str, TopologySpec] | None = None
        self._executor: Executor | None = None

    def load(self, order: PreloadOrder, answer: Callable[[WorkerMessage], None]) -> None:
        """Validate the upload, `answer` the verdict, then build its executor.

        Only a valid image's executor is kept; on any failure nothing is.
        """
        self._key = self._executor = None
        try:
            image, info = validated(Path(order.path), order.sha256, order.topology)
        except MachineModelError as error:
            answer(WorkerMessage(kind="invalid", reason=str(error)))
            return
        except OSError as error:
            # Not the image's fault as far as the worker can tell (the file is gone, or
            # unreadable here): the server checks the upload itself.
            answer(WorkerMessage(kind="unchecked", reason=str(error)))
            return
        except Exception as error:
            # A bug: the server checks the upload itself and answers what that finds.
            traceback.print_exc(file=sys.stderr)
            answer(WorkerMessage(kind="unchecked", reason=f"{type(error).__name__}: {error}"))
            return
        answer(WorkerMessage(kind="valid", image=info))
        try:
            self._executor = Executor(image, order.topology.build())
        except (MachineModelError, ValueError):
            return  # the run builds it again and fails with the reason
        except Exception:
            # The verdict is given: a run builds it again (and fails with its reason).
            log.warning("building the executor of a preload failed", exc_info=True)
            return
        self._key = (order.sha256, order.topology)

    def take(self, order: RunOrder) -> Executor | None:
        """The preloaded executor if it is of this order's image and network (once)."""
        key, executor = self._key, self._executor
        self._key = self._executor = None
        if key is None or order.image_sha256 is None or key != (order.image_sha256, order.topology):
            return None
        return executor


def _load(order: RunOrder, preloaded: _Preloaded) -> tuple[Executor, Results | None]:
    """The executor to run, and the results recorded before it (for a continuation)."""
    # Taken whatever the order: a preload that does not serve it is dropped, not kept beside.
    taken = preloaded.take(order)
    ready = taken if order.is_fresh or order.new_image is not None else None
    if ready is not None and order.is_fresh:
        return ready, None
    folder = Path(order.folder)
    if not order.is_fresh and order.previous_snapshot is not None:
        previous = folder / order.previous_snapshot
        try:
            with (previous / STATE_FILE).open("rb") as f:
                # Our own worker wrote this file into the server's own folder.
                executor = pickle.load(f)
            earlier, _ = decode_results((previous / RESULTS_FILE).read_bytes())
        except FileNotFoundError:
            raise _RunFailed(
                f"the state of job {order.job_id} after its last run was lost; start afresh"
            ) from None
        if not isinstance(executor, Executor):
            raise _RunFailed(f"the saved state of job {order.job_id} is not an executor")
        if order.new_image is not None:
            if ready is None:
                ready = Executor(decode_file(Path(order.new_image)), order.topology.build())
            ready.adopt_state(executor)  # refuses another layout, naming what differs
            executor = ready
        return executor, earlier
    return Executor(decode_file(folder / IMAGE_FILE), order.topology.build()), None


def _run(order: RunOrder, out: IO[bytes], preloaded: _Preloaded) -> None:
    executor, earlier = _load(order, preloaded)
    first_step = executor.step
    _send(out, WorkerMessage(kind="started", first_step=first_step))
    parts = [] if earlier is None else [earlier]
    done = 0
    chunk = min(order.n_steps, _FIRST_CHUNK_STEPS)
    while done < order.n_steps:
        started = time.perf_counter()
        parts.append(executor.run(chunk))
        done += chunk
        _send(out, WorkerMessage(kind="progress", steps_done=done))
        elapsed = max(time.perf_counter() - started, 1e-6)
        chunk = max(1, min(order.n_steps - done, 4 * chunk, int(chunk * _CHUNK_S / elapsed)))
    results = join_results(parts)
    snapshot = Path(order.folder) / order.snapshot
    snapshot.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        snapshot / RESULTS_FILE,
        encode_results(results, first_step=0, last_step=executor.step),
    )
    _send(out, WorkerMessage(kind="done", steps_done=done, first_step=first_step))
    _write_atomically(snapshot / STATE_FILE, pickle.dumps(executor, protocol=5))
    _send(out, WorkerMessage(kind="saved", steps_done=done, first_step=first_step))


def _warm(out: IO[bytes]) -> None:
    started = time.perf_counter()
    try:
        warm_kernels()
    except Exception:
        log.warning("loading the chip model's kernels failed", exc_info=True)
        return
    log.info("worker %d: kernels loaded in %.2f s", os.getpid(), time.perf_counter() - started)
    _send(out, WorkerMessage(kind="warmed"))


def main(argv: list[str] | None = None) -> int:
    """Serve run orders from standard input until it closes (``--nice N``: lower priority)."""
    args = argv if argv is not None else sys.argv[1:]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ServerFormatter())  # the server's own layout, on the same stderr
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if args[:1] == ["--nice"] and len(args) == 2:
        os.nice(int(args[1]))
    out = sys.stdout.buffer
    _send(out, WorkerMessage(kind="ready"))
    _warm(out)
    preloaded = _Preloaded()
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        received = _ORDERS.validate_json(line)
        if isinstance(received, PreloadOrder):
            try:
                preloaded.load(received, lambda message: _send(out, message))
            finally:
                _send(out, WorkerMessage(kind="preloaded"))
            continue
        order = received
        try:
            _run(order, out, preloaded)
        except (_RunFailed, MachineModelError, OSError) as error:
            _send(out, WorkerMessage(kind="failed", reason=str(error)))
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            _send(
                out,
                WorkerMessage(
                    kind="failed", reason=f"internal error in the worker: {type(error).__name__}"
                ),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
