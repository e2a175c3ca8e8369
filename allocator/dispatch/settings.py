"""The ``[dispatch]`` table of the server configuration: workers, limits, storage, dead chips.

A file may say::

    [dispatch]
    directory = "/var/lib/allotment/dispatch"   # images, states and results, one folder per job
    workers = 2                                 # worker processes running images
    max_image_bytes = 268435456                 # per job
    max_uploading_bytes = 1073741824            # images being received at once, all jobs
    min_free_bytes = 1073741824                 # refuse an image that would leave less free
    run_memory_bytes = 4294967296               # a worker above this fails its run
    run_wall_s = 3600.0                         # a run longer than this fails
    worker_nice = 0                             # 5: the server wins the CPU from runs
    start_workers = "with_server"               # or "on_upload": at the first image
    results_grace_s = 3600.0                    # results kept this long after the job ends
    dead_chips = [["spinn-1200", 13, 4]]        # machine, chip x, chip y (machine coordinates)
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DispatchSettings"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DispatchSettings(BaseModel):
    """The ``[dispatch]`` table."""

    model_config = _FROZEN
    directory: str = "allotment-dispatch"
    workers: Annotated[int, Field(ge=1, le=256)] = 2
    max_image_bytes: Annotated[int, Field(ge=1)] = 256 * 1024 * 1024
    max_uploading_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024 * 1024
    """The bytes of all images being received at once: what unfinished uploads may hold of
    the disk (and of threads and buffers) however many jobs a client makes."""
    min_free_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024 * 1024
    """Free space the dispatch directory's disk must keep after an image is received."""
    run_memory_bytes: Annotated[int, Field(ge=64 * 1024 * 1024)] = 4 * 1024 * 1024 * 1024
    run_wall_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 3600.0
    results_grace_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 3600.0
    upload_idle_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 30.0
    worker_nice: Annotated[int, Field(ge=0, le=19)] = 0
    start_workers: Literal["with_server", "on_upload"] = "with_server"
    """When the workers start and load the chip model's kernels: with the server (a fresh
    server's first run does not wait for them), or when the first image is uploaded."""
    dead_chips: tuple[tuple[str, int, int], ...] = ()
