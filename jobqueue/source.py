"""Turning a job's `code` into files in its working directory, as the SpiNNaker executor does.

The first form that matches wins:

* `http(s)://...` ending in `.zip`, `.tar`, `.tar.gz`, `.tgz`, `.tar.bz2`, `.tbz2`, `.tar.xz`,
  `.txz`: an archive, fetched and unpacked into the directory; the command runs there.
* any other `http(s)://` URL: a git repository, cloned (with submodules, which must be
  `http(s)://` too) into `<dir>/<repository name>`; the command runs in the clone. If it
  does not clone, it is downloaded, and unpacked if it is an archive (known by its first
  bytes: zip, tar, gzip, bzip2, xz), as the SpiNNaker executor does.
* a URL of any other scheme (`file://`, `ssh://`, ...) is refused: the runner fetches the code
  outside the sandbox, where a `file://` URL would read other jobs' files.
* `data:application/zip;base64,...` or `data:application/gzip;base64,...`: an archive carried
  in the request itself (what `allotment submit DIR` sends).
* anything else is inline code, written to `run.py`; the job's own command is ignored then,
  as on the real platform (always `run.py {system}`).

Fetching (a clone, a download) has `fetch_timeout_s` in all, however slowly a server sends.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["DEFAULT_COMMAND", "Prepared", "SourceError", "fetch_inputs", "prepare"]

DEFAULT_COMMAND = "run.py {system}"
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
"""The first bytes of gzip, bzip2 and xz (a tar inside, or not an archive at all)."""
_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK_BYTES = 1024 * 1024
_MAX_ARCHIVE_BYTES = 200 * 1024 * 1024
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_GIT_PROTOCOLS = "http:https"
"""The transports git may use for a job's repository and its submodules (GIT_ALLOW_PROTOCOL):
not `file`, which would clone the service's own directories, nor `ext`, which runs commands."""


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
    fetch_timeout_s: float = 300,
    max_unpacked_bytes: int = _MAX_ARCHIVE_BYTES,
) -> Prepared:
    """Write or fetch the job's code into `workdir`; raises SourceError.

    An archive that would unpack to more than `max_unpacked_bytes` is refused unpacked.
    """
    deadline = time.monotonic() + fetch_timeout_s
    text = code.strip()
    given = command.strip() if command and command.strip() else DEFAULT_COMMAND
    if _URL_SCHEME.match(text) and not text.startswith(("http://", "https://")):
        scheme = text.split("://", 1)[0]
        raise SourceError(
            f"code URLs must be http:// or https://, not {scheme}://"
            " (the code is fetched outside the job's sandbox)"
        )
    if text.startswith(("http://", "https://")):
        if text.split("?", 1)[0].endswith(_ARCHIVE_SUFFIXES):
            _unpack(_download(text, deadline), workdir, max_unpacked_bytes)
            return Prepared(workdir, given)
        name = PurePosixPath(text.rstrip("/").split("/")[-1]).name.removesuffix(".git") or "repo"
        clone = workdir / name
        try:
            _clone(text, clone, deadline)
        except SourceError as not_cloned:
            # Not a repository: an archive named some other way (a download link)?
            try:
                data = _download(text, deadline)
            except SourceError:
                raise not_cloned from None
            if not _is_archive(data):
                raise not_cloned from None
            _unpack(data, workdir, max_unpacked_bytes)
            return Prepared(workdir, given)
        return Prepared(clone, given)
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if not header.endswith(";base64"):
            raise SourceError("a data: URL of code must be base64")
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            raise SourceError("the data: URL of code is not valid base64") from None
        if len(data) > _MAX_ARCHIVE_BYTES:
            raise SourceError(f"the data: URL's archive is larger than {_MAX_ARCHIVE_BYTES} bytes")
        _unpack(data, workdir, max_unpacked_bytes)
        return Prepared(workdir, given)
    if not text:
        raise SourceError("The job did not appear to be supported on this system: no code")
    (workdir / "run.py").write_text(code)
    return Prepared(workdir, DEFAULT_COMMAND)


def fetch_inputs(
    urls: list[str],
    workdir: Path,
    fetch_timeout_s: float = 300,
    max_bytes: int = _MAX_ARCHIVE_BYTES,
) -> list[str]:
    """Download a job's `input_data` into `workdir`, each under the last part of its URL's
    path (`input_<n>` if that is empty or taken); the names written. Raises SourceError.

    At most `max_bytes` in all and `fetch_timeout_s` in all, as the code's own fetch.
    """
    deadline = time.monotonic() + fetch_timeout_s
    names: list[str] = []
    n_bytes = 0
    for n, url in enumerate(urls):
        data = _download(url, deadline)
        n_bytes += len(data)
        if n_bytes > max_bytes:
            raise SourceError(f"the job's input data is more than its limit of {max_bytes} bytes")
        name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
        if not name or name in (".", "..") or (workdir / name).exists() or "\0" in name:
            name = f"input_{n}"
        with (workdir / name).open("xb") as out:
            out.write(data)
        names.append(name)
    return names


def _clone(url: str, clone: Path, deadline: float) -> None:
    """`git clone` the repository with its submodules, of the last commit only where the
    server can send that (a plain web server's "dumb" transport cannot: it is cloned whole)."""
    depth = ["--depth", "1"]
    while True:
        try:
            subprocess.run(
                ["git", "clone", "--quiet", *depth, "--recurse-submodules", url, str(clone)],
                check=True,
                capture_output=True,
                timeout=max(0.0, deadline - time.monotonic()),
                env={**os.environ, "GIT_ALLOW_PROTOCOL": _GIT_PROTOCOLS},
            )
            return
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            detail = (getattr(error, "stderr", b"") or b"").decode(errors="replace").strip()
            if depth and "does not support shallow" in detail:
                depth = []
                continue
            raise SourceError(f"cannot clone {url}: {detail or error}") from None


def _download(url: str, deadline: float) -> bytes:
    """The body at `url`, read before `deadline` (time.monotonic()) whatever the pace (a
    server that stops sending is given up after one read's timeout, at most 60 s, more)."""
    chunks: list[bytes] = []
    n_bytes = 0

    def left_s() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceError(f"cannot download {url}: it took longer than the time allowed")
        return left

    try:
        with urllib.request.urlopen(url, timeout=min(60.0, left_s())) as answer:
            while n_bytes <= _MAX_ARCHIVE_BYTES:
                left_s()
                chunk = answer.read1(_CHUNK_BYTES)
                if not chunk:
                    break
                chunks.append(chunk)
                n_bytes += len(chunk)
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot download {url}: {error}") from None
    if n_bytes > _MAX_ARCHIVE_BYTES:
        raise SourceError(f"{url} is larger than {_MAX_ARCHIVE_BYTES} bytes")
    return b"".join(chunks)


def _is_archive(data: bytes) -> bool:
    return (
        data.startswith(_ZIP_MAGIC)
        or data.startswith(_COMPRESSED_MAGIC)
        or data[257:262] == b"ustar"  # a plain tar
    )


def _unpack(data: bytes, workdir: Path, max_bytes: int) -> None:
    """Unpack an archive safely (no absolute paths, no `..`, no links out, at most
    `max_bytes` unpacked: the sizes are added up before anything is written)."""

    def check_size(total: int) -> None:
        if total > max_bytes:
            raise SourceError(
                f"the archive unpacks to {total} bytes, more than the job's limit of {max_bytes}"
            )

    try:
        if data.startswith(_ZIP_MAGIC):
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
