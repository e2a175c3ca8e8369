"""Turning a job's `code` into files in its working directory, as the SpiNNaker executor does.

The first form that matches wins:

* `http(s)://...` ending in `.zip`, `.tar`, `.tar.gz`, `.tgz`: an archive, fetched and unpacked
  into the directory; the command runs there.
* any other `http(s)://` or `file://` URL: a git repository, cloned (with submodules) into
  `<dir>/<repository name>`; the command runs in the clone.
* `data:application/zip;base64,...` or `data:application/gzip;base64,...`: an archive carried
  in the request itself (what `allotment submit DIR` sends).
* anything else is inline code, written to `run.py`; the job's own command is ignored then,
  as on the real platform (always `run.py {system}`).
"""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["DEFAULT_COMMAND", "Prepared", "SourceError", "prepare"]

DEFAULT_COMMAND = "run.py {system}"
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_MAX_ARCHIVE_BYTES = 200 * 1024 * 1024


class SourceError(Exception):
    """The job's code could not be turned into files; the message says why."""


@dataclass(frozen=True)
class Prepared:
    """Where the command runs and what it is."""

    cwd: Path
    command: str


def prepare(
    code: str,
    command: str | None,
    workdir: Path,
    git_timeout_s: float = 300,
    max_unpacked_bytes: int = _MAX_ARCHIVE_BYTES,
) -> Prepared:
    """Write or fetch the job's code into `workdir`; raises SourceError.

    An archive that would unpack to more than `max_unpacked_bytes` is refused unpacked.
    """
    text = code.strip()
    given = command.strip() if command and command.strip() else DEFAULT_COMMAND
    if text.startswith(("http://", "https://", "file://")):
        if text.split("?", 1)[0].endswith(_ARCHIVE_SUFFIXES):
            _unpack(_download(text), text.split("?", 1)[0], workdir, max_unpacked_bytes)
            return Prepared(workdir, given)
        name = PurePosixPath(text.rstrip("/").split("/")[-1]).name.removesuffix(".git") or "repo"
        clone = workdir / name
        try:
            subprocess.run(
                [
                    "git",
                    "clone",
                    "--quiet",
                    "--depth",
                    "1",
                    "--recurse-submodules",
                    text,
                    str(clone),
                ],
                check=True,
                capture_output=True,
                timeout=git_timeout_s,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            detail = getattr(error, "stderr", b"") or b""
            raise SourceError(
                f"cannot clone {text}: {detail.decode(errors='replace').strip() or error}"
            ) from None
        return Prepared(clone, given)
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if not header.endswith(";base64"):
            raise SourceError("a data: URL of code must be base64")
        kind = "x.zip" if header.startswith("data:application/zip") else "x.tar.gz"
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            raise SourceError("the data: URL of code is not valid base64") from None
        if len(data) > _MAX_ARCHIVE_BYTES:
            raise SourceError(f"the data: URL's archive is larger than {_MAX_ARCHIVE_BYTES} bytes")
        _unpack(data, kind, workdir, max_unpacked_bytes)
        return Prepared(workdir, given)
    if not text:
        raise SourceError("The job did not appear to be supported on this system: no code")
    (workdir / "run.py").write_text(code)
    return Prepared(workdir, DEFAULT_COMMAND)


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            data: bytes = answer.read(_MAX_ARCHIVE_BYTES + 1)
    except OSError as error:
        raise SourceError(f"cannot download {url}: {error}") from None
    if len(data) > _MAX_ARCHIVE_BYTES:
        raise SourceError(f"{url} is larger than {_MAX_ARCHIVE_BYTES} bytes")
    return data


def _unpack(data: bytes, name: str, workdir: Path, max_bytes: int) -> None:
    """Unpack an archive safely (no absolute paths, no `..`, no links out, at most
    `max_bytes` unpacked: the sizes are added up before anything is written)."""

    def check_size(total: int) -> None:
        if total > max_bytes:
            raise SourceError(
                f"the archive unpacks to {total} bytes, more than the job's limit of {max_bytes}"
            )

    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zipped:
                for member in zipped.namelist():
                    if member.startswith("/") or ".." in PurePosixPath(member).parts:
                        raise SourceError(f"archive member {member!r} points outside the job")
                check_size(sum(info.file_size for info in zipped.infolist()))
                zipped.extractall(workdir)
        else:
            with tarfile.open(fileobj=io.BytesIO(data)) as tarred:
                check_size(sum(member.size for member in tarred.getmembers()))
                tarred.extractall(workdir, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError) as error:
        raise SourceError(f"cannot unpack the archive: {error}") from None
