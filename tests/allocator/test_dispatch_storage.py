"""Dispatch's job folders: an image goes in place so that no crash leaves a record naming
an image other than the one on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.dispatch import storage
from allocator.dispatch.storage import IMAGE_FILE, ImageInfo, JobFolderRecord

OLD = ImageInfo(sha256="a" * 64, n_bytes=3, n_cores=1, n_chips=1, timestep_us=1000)
NEW = ImageInfo(sha256="b" * 64, n_bytes=3, n_cores=1, n_chips=1, timestep_us=1000)


def _loaded(tmp_path: Path) -> Path:
    """A job folder whose record names the image on disk (OLD)."""
    storage.write_record(tmp_path, JobFolderRecord(job_id=7, token_sha256="t", image=OLD))
    folder = storage.job_folder(tmp_path, 7)
    (folder / IMAGE_FILE).write_bytes(b"old")
    return folder


def _on_disk(tmp_path: Path) -> JobFolderRecord:
    (record,), unrecorded, unreadable = storage.read_records(tmp_path)
    assert unrecorded == unreadable == []
    return record


def test_an_installed_image_is_named_by_no_record_until_the_next_write(tmp_path: Path) -> None:
    folder = _loaded(tmp_path)
    before = _on_disk(tmp_path)  # (reading records removes leftover uploads: read first)
    upload = folder / "upload-1.tmp"
    upload.write_bytes(b"new")
    storage.install_image(tmp_path, 7, before.model_copy(update={"image": None}), upload)
    # A crash here: the record names no image, so the new bytes are never taken for OLD.
    assert (folder / IMAGE_FILE).read_bytes() == b"new"
    assert _on_disk(tmp_path) == before.model_copy(update={"image": None})
    record = before.model_copy(update={"image": NEW})
    storage.write_record(tmp_path, record)
    assert _on_disk(tmp_path).image == NEW


def test_a_first_image_writes_no_record_before_its_own(tmp_path: Path) -> None:
    # The job's first load: nothing on disk yet, and no record with a token nobody got.
    folder = storage.job_folder(tmp_path, 7)
    folder.mkdir(parents=True)
    upload = folder / "upload-1.tmp"
    upload.write_bytes(b"new")
    storage.install_image(tmp_path, 7, None, upload)
    assert (folder / IMAGE_FILE).read_bytes() == b"new"
    assert storage.read_records(tmp_path) == ([], [folder], [])  # a restart removes the folder


def test_a_record_that_cannot_be_understood_keeps_its_folder(tmp_path: Path) -> None:
    # Such a folder used to be taken for a first load cut short and removed at start, its
    # image, state and results with it (a newer server's record, a read error).
    folder = _loaded(tmp_path)
    record = folder / "record.json"
    record.write_text(record.read_text()[:-1] + ', "field_of_a_newer_server": 1}')
    assert storage.read_records(tmp_path) == ([], [], [(folder, "1 fields not understood")])


def test_a_failed_rename_leaves_a_record_without_an_image(tmp_path: Path) -> None:
    folder = _loaded(tmp_path)
    with pytest.raises(FileNotFoundError):
        storage.install_image(
            tmp_path,
            7,
            _on_disk(tmp_path).model_copy(update={"image": None}),
            folder / "upload-gone.tmp",
        )
    assert _on_disk(tmp_path).image is None
    assert _on_disk(tmp_path).token_sha256 == "t"  # the token the client holds still works


def test_a_state_cut_short_inside_a_snapshot_is_removed_at_start(tmp_path: Path) -> None:
    # A worker's half-written state (a full disk) stayed inside the recorded snapshot
    # across restarts, keeping the disk full.
    folder = _loaded(tmp_path)
    snapshot = folder / "snap-1"
    snapshot.mkdir()
    (snapshot / "state.pickle").write_bytes(b"whole")
    (snapshot / "state.pickle.tmp").write_bytes(b"cut sh")
    _on_disk(tmp_path)
    assert sorted(p.name for p in snapshot.iterdir()) == ["state.pickle"]
