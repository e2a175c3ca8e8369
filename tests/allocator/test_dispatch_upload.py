"""ImageUpload: raw bytes into a temporary file, hashed off the event loop, with backpressure."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from allocator.dispatch.errors import UploadError
from allocator.dispatch.upload import ImageUpload


class FakeTransport:
    """Records pause_reading/resume_reading calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_bytes_are_written_and_hashed_and_reading_pauses_while_the_disk_lags(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (100 * 1024)  # 25 MiB, fed faster than it is written

    async def scenario() -> tuple[str, FakeTransport]:
        transport = FakeTransport()
        upload = ImageUpload(tmp_path / "u.tmp", len(data) + 10, transport)
        for start in range(0, len(data), 256 * 1024):
            assert upload.feed(data[start : start + 256 * 1024]) == min(
                256 * 1024, len(data) - start
            )
        assert not upload.is_complete
        assert upload.feed(b"0123456789-the next request") == 10
        assert upload.is_complete
        return await upload.finished, transport

    digest, transport = asyncio.run(scenario())
    assert digest == hashlib.sha256(data + b"0123456789").hexdigest()
    assert (tmp_path / "u.tmp").read_bytes() == data + b"0123456789"
    assert transport.calls[:1] == ["pause"]
    assert transport.calls[-1] == "resume"


def test_a_lost_connection_fails_the_upload(tmp_path: Path) -> None:
    async def scenario() -> None:
        upload = ImageUpload(tmp_path / "u.tmp", 3_000_000, FakeTransport())
        upload.feed(b"x" * 2_000_000)
        upload.lost()
        with pytest.raises(UploadError, match="lost after 2000000 of 3000000 bytes"):
            await upload.finished

    asyncio.run(scenario())


def test_a_trailer_is_kept_apart_from_the_file_and_finished_waits_for_it(tmp_path: Path) -> None:
    data = b"image bytes" * 100_000
    digest = hashlib.sha256(data).hexdigest().encode()

    async def scenario() -> tuple[str, bytes, bool]:
        upload = ImageUpload(tmp_path / "u.tmp", len(data), FakeTransport(), trailer_bytes=64)
        # The last image byte and half the trailer in one chunk: not finished yet.
        assert upload.feed(data[:-1]) == len(data) - 1
        assert upload.feed(data[-1:] + digest[:32]) == 33
        assert not upload.is_complete
        await upload.synced()  # the image is written and synced without the trailer
        is_early = upload.finished.done()
        assert upload.feed(digest[32:] + b"next request") == 32
        assert upload.is_complete
        return await upload.finished, upload.trailer, is_early

    finished, trailer, is_early = asyncio.run(scenario())
    assert not is_early
    assert finished == digest.decode()
    assert trailer == digest
    assert (tmp_path / "u.tmp").read_bytes() == data


def test_an_empty_image_with_a_trailer(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"").hexdigest().encode()

    async def scenario() -> tuple[str, bytes]:
        upload = ImageUpload(tmp_path / "u.tmp", 0, FakeTransport(), trailer_bytes=64)
        assert not upload.is_complete
        assert upload.feed(digest) == 64
        return await upload.finished, upload.trailer

    assert asyncio.run(scenario()) == (digest.decode(), digest)
    assert (tmp_path / "u.tmp").read_bytes() == b""
