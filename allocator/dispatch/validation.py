"""Decodes an uploaded image file and checks it against the job's allocation.

One function for both places that do it: an idle worker process, which goes on to build the
executor from the same decoded image (so the server's process does no CPU-heavy work while
an upload is checked), and a thread of the server when no worker is free. Both give the
same verdict and the same message naming the chip or core.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from allocator.dispatch.storage import ImageInfo
from allocator.dispatch.topology import TopologySpec
from machine_models.errors import ImageFormatError
from machine_models.image import Image
from machine_models.resources import validate

__all__ = ["decode_file", "validated"]


def decode_file(path: Path) -> Image:
    """Decode an image file through a map of it: its bytes are not read into memory first.

    Raises:
        ImageFormatError: the bytes are no image (bad magic, truncated).
        OSError: the file cannot be read.
    """
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return Image.decode(b"")
        message = ""
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                return Image.decode(mapped)  # type: ignore[arg-type]
            except ImageFormatError as error:
                # Leave the except block before the map closes: the traceback holds a view.
                message = str(error)
    raise ImageFormatError(message.removeprefix("malformed image: "))


def validated(path: Path, sha256: str, spec: TopologySpec) -> tuple[Image, ImageInfo]:
    """Decode the image file at `path` and check that it fits the allocation `spec`.

    Returns:
        The image and what the job's record keeps of it (`sha256` is the upload's digest).

    Raises:
        MachineModelError: the image is malformed or does not fit; the message names the
            chip or core (the caller prefixes the job).
        OSError: the file cannot be read.
    """
    n_bytes = path.stat().st_size
    image = decode_file(path)
    validate(image, spec.build())
    chips = {core.chip for core in image.cores} | set(image.tables)
    info = ImageInfo(
        sha256=sha256,
        n_bytes=n_bytes,
        n_cores=len(image.cores),
        n_chips=len(chips),
        timestep_us=image.timestep_us,
    )
    return image, info
