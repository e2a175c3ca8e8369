"""Dispatch's files: one folder per job holding its image, its record, its states and results.

::

    <directory>/job-7/
        record.json             JobFolderRecord: token digest, image, runs (rewritten atomically)
        image.bin               the validated image (only ever renamed into place)
        upload-<hex>.tmp        an upload in progress (removed unless it becomes image.bin)
        snap-3/results.bin      what runs 1..3 recorded (written by the worker of run 3)
        snap-3/state.pickle     the executor after run 3, for a continuation

A record names the snapshot that is current; older ones are removed once a newer one is
recorded. Every function here blocks: the command family calls them through its file
thread, never on the event loop.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, ValidationError

from allocator.dispatch.topology import TopologySpec
from protocol.dispatch import RunState

__all__ = [
    "ImageInfo",
    "JobFolderRecord",
    "RunRecord",
    "install_image",
    "job_folder",
    "read_records",
    "remove_folder",
    "write_record",
]

_RECORD: Final = "record.json"
_PREFIX: Final = "job-"
IMAGE_FILE: Final = "image.bin"
RESULTS_FILE: Final = "results.bin"
STATE_FILE: Final = "state.pickle"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageInfo(_Frozen):
    """The job's validated image."""

    sha256: str
    n_bytes: int
    n_cores: int
    n_chips: int
    timestep_us: int


class RunRecord(_Frozen):
    """One run as recorded (progress is not recorded, only where a run ended)."""

    run_id: int
    n_steps: int
    is_fresh: bool
    first_step: int
    state: RunState
    steps_done: int = 0
    reason: str | None = None


class JobFolderRecord(_Frozen):
    """What `record.json` holds."""

    job_id: int
    token_sha256: str
    image: ImageInfo | None = None
    topology: TopologySpec | None = None
    runs: tuple[RunRecord, ...] = ()
    snapshot: str | None = None
    state_step: int = 0
    is_state_saved: bool = False
    state_lost: str | None = None
    """Why the running state went with the image (boards reset or powered off), until the
    next image: a keep-state load is refused with it rather than quietly starting afresh."""
    ended_at: float | None = None


def job_folder(directory: Path, job_id: int) -> Path:
    """The folder of one job."""
    return directory / f"{_PREFIX}{job_id}"


def write_record(directory: Path, record: JobFolderRecord) -> None:
    """Write a job's record atomically (temporary file, fsync, rename)."""
    folder = job_folder(directory, record.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f"{_RECORD}.tmp"
    with temporary.open("wb") as out:
        out.write(record.model_dump_json().encode())
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(folder / _RECORD)


def install_image(
    directory: Path, job_id: int, interim: JobFolderRecord | None, upload: Path
) -> None:
    """Put a validated upload in place as a job's image, its record first saying it has none.

    `interim` is the job's record as it stood before this load, with no image (None: it had
    no record on disk). It is written first; the new record, with the new image's details
    and any new token, is written after this, once the load is answered for. Until then no
    record on disk names an image while image.bin may hold another. A crash in between
    leaves the job as it was with no image (a restart removes the image file such a record
    does not name; the job loads again, with the token or owner it had), never one whose
    image is not the one its record describes, nor one held by a token nobody got.
    """
    if interim is not None:
        if interim.image is not None:
            raise ValueError(f"the interim record of job {job_id} names an image")
        write_record(directory, interim)
    upload.replace(job_folder(directory, job_id) / IMAGE_FILE)


def read_records(
    directory: Path,
) -> tuple[list[JobFolderRecord], list[Path], list[tuple[Path, str]]]:
    """Every job folder's record; the folders with none (a first load cut short); and those
    whose record cannot be read or understood, with why (a failing disk, a newer server's).

    Leftover temporary files (uploads, half-written records, snapshots and states, a state
    cut short by a full disk among them) are removed.
    """
    records: list[JobFolderRecord] = []
    unrecorded: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    if not directory.is_dir():
        return records, unrecorded, unreadable
    for folder in sorted(directory.iterdir()):
        if not folder.is_dir() or not folder.name.startswith(_PREFIX):
            continue
        for leftover in (*folder.glob("*.tmp"), *folder.glob("snap-*/*.tmp")):
            remove_folder(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        try:
            records.append(JobFolderRecord.model_validate_json((folder / _RECORD).read_bytes()))
        except FileNotFoundError:
            unrecorded.append(folder)
        except OSError as error:
            unreadable.append((folder, error.strerror or str(error)))
        except ValidationError as error:
            unreadable.append((folder, f"{error.error_count()} fields not understood"))
    return records, unrecorded, unreadable


def remove_folder(path: Path) -> None:
    """Remove a folder and everything in it (nothing if it is not there)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_old_snapshots(folder: Path, keep: str | None) -> None:
    """Remove every snapshot of a job but `keep`."""
    for snapshot in folder.glob("snap-*"):
        if snapshot.name != keep:
            remove_folder(snapshot)
