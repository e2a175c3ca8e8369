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
gives a new key, so a stale cache is never loaded; old keys are left for the operator to
remove. The root is `--kernel-cache`, else `$ALLOTMENT_KERNEL_CACHE`, else
`$XDG_CACHE_HOME/allotment/kernels` (`~/.cache/allotment/kernels`).

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
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["KernelCache", "default_root", "numba_subpath"]

_PACKAGE = "machine_models"
_WARM = ".warm"
_NUMBA_SUFFIXES = (".nbi", ".nbc")


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
        """Copy the warm cache to `target` (a job's own); False if there is none to copy."""
        try:
            shutil.copytree(self.path, target)
        except OSError:  # not filled, or removed by an operator meanwhile: the job compiles
            shutil.rmtree(target, ignore_errors=True)
            return False
        return True

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / f"{self.key}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
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


def _is_writable(cache_dir: Path) -> bool:
    """Whether numba can keep a cache in `cache_dir` (made if missing)."""
    existing = cache_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK | os.X_OK)
