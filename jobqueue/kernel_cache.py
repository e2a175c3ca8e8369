"""The jobs' compiled kernels: one warm numba cache per version of the code, shared by runners.

A job's Python cannot keep numba's cache in the (read-only) source tree, so each job gets a
copy of a cache compiled outside any job (`jobqueue.warmup`). That cache depends only on the
code, so every runner of the same code (every service, every jobs directory) shares one::

    <root>/
        <key>/               a warm cache in numba's NUMBA_CACHE_DIR layout, never changed
        <key>.lock           held by the one process filling <key>
        <key>.new-<random>/  <key> being filled; renamed to <key> when whole

The key is a digest of what numba's cached code depends on: numba's and Python's versions,
the machine, the chip model package's directory (numba files its cache under a digest of the
source directory) and the bytes of every module of the package (a kernel inlines constants of
modules other than its own, which numba's own check does not see). Any change of the code
gives a new key, so a stale cache is never loaded. A cache's `.warm` marker is touched
each time it is copied for a job; `prune` (run at each runner's start) removes the caches of
other keys that no runner has used for `UNUSED_DAYS`, and the scratch folders of fills that
died, each only while holding its key's lock, so never one being filled. The root is
`--kernel-cache`, else `$ALLOTMENT_KERNEL_CACHE`, else `$XDG_CACHE_HOME/allotment/kernels`
(`~/.cache/allotment/kernels`).

The cache is numba's own cache of the chip model, copied: where the tree is writable the
warm-up compiles into `machine_models/__pycache__` (or `$NUMBA_CACHE_DIR` when set), as the
allocation server's workers and any other process of ours do, so whichever runs first
compiles for the others too, and the copy is taken after it. numba replaces each of its files
whole and checks each entry's source digest and version as it loads it, so a copy can only
spare compiling, never change what runs. Where that cache is not writable, the warm-up
compiles into the new cache directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["UNUSED_DAYS", "KernelCache", "default_root", "numba_subpath"]

_PACKAGE = "machine_models"
_WARM = ".warm"
_NUMBA_SUFFIXES = (".nbi", ".nbc")
_SCRATCH = ".new-"
_LOCK = ".lock"
_KEY = re.compile("[0-9a-f]{32}")

UNUSED_DAYS = 30
"""A cache of other code that no job has used for this long is removed by `prune`."""


def default_root() -> Path:
    """Where kernel caches are kept unless an option says otherwise."""
    named = os.environ.get("ALLOTMENT_KERNEL_CACHE")
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "allotment" / "kernels"


def numba_subpath(source_dir: Path) -> str:
    """The folder numba files a source directory's cache under, inside NUMBA_CACHE_DIR.

    As numba's `_CacheLocator.get_suitable_cache_subpath` (a test holds the two together).
    """
    path = os.path.abspath(source_dir)
    return f"{os.path.basename(path)}_{hashlib.sha1(path.encode()).hexdigest()}"


def _package_dirs() -> list[Path]:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def code_key(package_dirs: list[Path]) -> str:
    """The digest of what the compiled kernels depend on (see the module docstring)."""
    digest = hashlib.sha256()
    try:
        numba_version = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        numba_version = "none"
    for fact in (numba_version, sys.version, sys.implementation.cache_tag, platform.machine()):
        digest.update(f"{fact}\0".encode())
    for directory in package_dirs:
        digest.update(f"{directory}\0".encode())
        for path in sorted(directory.rglob("*.py")):
            digest.update(f"{path.relative_to(directory).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


class KernelCache:
    """The warm kernel cache of this code under a root directory.

    Args:
        root: the directory of the caches (`default_root()` unless configured).
        package_dirs: the chip model package's directories (default: where it is imported
            from).
    """

    def __init__(self, root: Path, *, package_dirs: list[Path] | None = None) -> None:
        self.root = root
        self._package_dirs = _package_dirs() if package_dirs is None else package_dirs
        self.key = code_key(self._package_dirs)
        self.path = root / self.key

    def __repr__(self) -> str:
        return f"<KernelCache {self.path}{' warm' if self.is_warm else ''}>"

    @property
    def is_warm(self) -> bool:
        """Whether the cache of this code is whole (filled and renamed into place)."""
        return (self.path / _WARM).is_file()

    def fill(self, compile_into: Callable[[Path | None], bool]) -> bool:
        """Make the cache warm unless it is; True when it is warm afterwards.

        One process fills it at a time (others wait on the lock, then find it warm).
        `compile_into(where)` runs the warm-up with `NUMBA_CACHE_DIR=where`, or with the
        environment's own cache when `where` is None (False: it failed, and nothing is
        left); then numba's cache of the package is copied in and the whole renamed into
        place.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self.is_warm:
                return True
            scratch = self.root / f"{self.key}.new-{uuid.uuid4().hex[:12]}"
            try:
                scratch.mkdir()
                is_shared = all(_is_writable(self._numba_dir(d)) for d in self._package_dirs)
                if not compile_into(None if is_shared else scratch):
                    return False
                if is_shared:  # else it compiled into the scratch folder itself
                    self._copy_numba_cache(scratch)
                (scratch / _WARM).touch()
                shutil.rmtree(self.path, ignore_errors=True)  # a half-removed one, if any
                scratch.rename(self.path)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return True

    def copy_to(self, target: Path) -> bool:
        """Copy the warm cache to `target` (a job's own); False if there is none to copy.

        The copy marks the cache used (`prune` keeps what was used lately)."""
        try:
            shutil.copytree(self.path, target)
        except OSError:  # not filled, or removed by an operator meanwhile: the job compiles
            shutil.rmtree(target, ignore_errors=True)
            return False
        with contextlib.suppress(OSError):  # a root this user may read but not write
            os.utime(self.path / _WARM)
        return True

    def prune(self, *, unused_s: float = UNUSED_DAYS * 86_400.0) -> list[str]:
        """Remove the caches of other code not used for `unused_s`; the names removed.

        Also removes the scratch folders of fills that died (older than `unused_s` too).
        Only names made here are looked at (a key is 32 hex digits), so a root shared with
        other files loses none of them. A key whose lock another process holds (filling
        it) is left alone; so is this code's own cache, used or not. Lock files stay: one
        removed while another process waits on it would let two fill the same key.
        """
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        cutoff = time.time() - unused_s
        keys: set[str] = set()
        for entry in self.root.iterdir():
            name = entry.name
            key = name.split(_SCRATCH)[0].removesuffix(_LOCK)
            if key != self.key and _KEY.fullmatch(key):
                keys.add(key)
        for key in sorted(keys):
            with self._try_lock(key) as is_locked:
                if not is_locked:
                    continue
                for entry in sorted(self.root.glob(f"{key}*")):
                    if entry.name == f"{key}{_LOCK}":
                        continue
                    if entry.name != key and not entry.name.startswith(f"{key}{_SCRATCH}"):
                        continue  # another key that begins with this one
                    if entry.is_dir() and _last_used(entry) < cutoff:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed.append(entry.name)
        return removed

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / f"{self.key}{_LOCK}").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _try_lock(self, key: str) -> Iterator[bool]:
        """Hold another key's lock if nobody does (True), else yield False at once."""
        path = self.root / f"{key}{_LOCK}"
        try:
            lock = path.open("a")
        except OSError:
            yield False
            return
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _numba_dir(directory: Path) -> Path:
        """Where numba keeps the cache of a source directory for processes of this environment."""
        named = os.environ.get("NUMBA_CACHE_DIR")
        if named:
            return Path(named) / numba_subpath(directory)
        return directory / "__pycache__"

    def _copy_numba_cache(self, scratch: Path) -> None:
        """Copy numba's entries for the package (see the module docstring)."""
        for directory in self._package_dirs:
            source = self._numba_dir(directory)
            target = scratch / numba_subpath(directory)
            target.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                for entry in source.iterdir():
                    if entry.suffix in _NUMBA_SUFFIXES and ".tmp." not in entry.name:
                        # numba replaces its files whole, so a copy is of one version or
                        # gone (the job compiles what it lacks)
                        with contextlib.suppress(FileNotFoundError):
                            shutil.copy2(entry, target / entry.name)


def _last_used(entry: Path) -> float:
    """When a cache was last copied for a job (or filled); a scratch folder's own time."""
    try:
        marker = entry / _WARM
        return (marker if marker.exists() else entry).stat().st_mtime
    except OSError:
        return time.time()  # gone or unreadable meanwhile: not this pass's to remove


def _is_writable(cache_dir: Path) -> bool:
    """Whether numba can keep a cache in `cache_dir` (made if missing)."""
    existing = cache_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK | os.X_OK)
