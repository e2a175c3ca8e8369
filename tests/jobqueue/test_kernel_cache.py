"""The shared kernel cache: keyed by the code, filled once under a lock, copied from numba's."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from numba.core.caching import _CacheLocator

import machine_models
from jobqueue.kernel_cache import KernelCache, code_key, default_root, numba_subpath

PACKAGE_DIR = Path(machine_models.__file__).parent


def _package(tmp_path: Path) -> Path:
    package = tmp_path / "src" / "machine_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text("RATE = 1\n")
    return package


def test_the_subpath_is_the_one_numba_files_the_chip_models_cache_under() -> None:
    kernels = PACKAGE_DIR / "kernels.py"
    assert numba_subpath(PACKAGE_DIR) == _CacheLocator.get_suitable_cache_subpath(str(kernels))


def test_the_key_changes_with_any_module_of_the_package_and_with_its_place(tmp_path: Path) -> None:
    package = _package(tmp_path)
    key = code_key([package])
    assert code_key([package]) == key
    (package / "kernels.py").write_text("RATE = 2\n")
    assert code_key([package]) != key
    (package / "kernels.py").write_text("RATE = 1\n")
    assert code_key([package]) == key
    moved = shutil.copytree(package, tmp_path / "elsewhere" / "machine_models")
    assert code_key([moved]) != key


def test_the_root_comes_from_the_environment_then_the_xdg_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOTMENT_KERNEL_CACHE", str(tmp_path / "named"))
    assert default_root() == tmp_path / "named"
    monkeypatch.delenv("ALLOTMENT_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "allotment" / "kernels"


def test_concurrent_fills_compile_once_and_copy_numbas_cache_of_the_tree_after(
    tmp_path: Path,
) -> None:
    package = _package(tmp_path)
    in_tree = package / "__pycache__"
    in_tree.mkdir()
    (in_tree / "f-1.py311.nbi").write_bytes(b"index")
    (in_tree / "f-1.py311.nbi.tmp.0123").write_bytes(b"half")
    (in_tree / "kernels.cpython-311.pyc").write_bytes(b"bytecode")
    compiled: list[Path | None] = []
    entered = threading.Barrier(2)

    def compile_into(where: Path | None) -> bool:
        compiled.append(where)
        (in_tree / "f-1.py311.1.nbc").write_bytes(b"data")  # as numba would, in the tree
        return True

    def fill() -> None:
        entered.wait()
        assert KernelCache(tmp_path / "root", package_dirs=[package]).fill(compile_into)

    threads = [threading.Thread(target=fill) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache = KernelCache(tmp_path / "root", package_dirs=[package])
    assert compiled == [None]  # once, into numba's own cache of the (writable) tree
    assert cache.is_warm
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [cache.key, f"{cache.key}.lock"]
    copied = cache.path / numba_subpath(package)
    assert sorted(p.name for p in copied.iterdir()) == ["f-1.py311.1.nbc", "f-1.py311.nbi"]
    assert cache.copy_to(tmp_path / "job")
    assert (tmp_path / "job" / numba_subpath(package) / "f-1.py311.1.nbc").read_bytes() == b"data"


def test_with_numba_cache_dir_set_the_entries_are_copied_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _package(tmp_path)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    entries = tmp_path / "numba" / numba_subpath(package)

    def compile_into(where: Path | None) -> bool:
        entries.mkdir(parents=True)
        (entries / "f-1.py311.nbi").write_bytes(b"index")
        return where is None

    cache = KernelCache(tmp_path / "root", package_dirs=[package])
    assert cache.fill(compile_into)
    assert (cache.path / numba_subpath(package) / "f-1.py311.nbi").read_bytes() == b"index"


def test_a_failed_fill_leaves_no_cache_and_nothing_half_made(tmp_path: Path) -> None:
    package = _package(tmp_path)
    cache = KernelCache(tmp_path / "root", package_dirs=[package])
    assert not cache.fill(lambda scratch: False)
    assert not cache.is_warm
    assert [p.name for p in (tmp_path / "root").iterdir()] == [f"{cache.key}.lock"]
    assert not cache.copy_to(tmp_path / "job")
    assert not (tmp_path / "job").exists()


def test_where_the_tree_is_read_only_the_warm_up_compiles_into_the_new_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _package(tmp_path)
    # As for a tree installed read-only (the tests run as any user, so the check is faked).
    monkeypatch.setattr("jobqueue.kernel_cache._is_writable", lambda cache_dir: False)
    stale = package / "__pycache__"  # left by whoever could once write there
    stale.mkdir()
    (stale / "f-1.py311.nbi").write_bytes(b"an older index")
    compiled: list[Path | None] = []

    def compile_into(where: Path | None) -> bool:
        compiled.append(where)
        assert where is not None
        entries = where / numba_subpath(package)  # numba's layout under NUMBA_CACHE_DIR
        entries.mkdir(parents=True)
        (entries / "f-1.py311.nbi").write_bytes(b"index")
        (entries / "f-1.py311.1.nbc").write_bytes(b"data")
        return True

    cache = KernelCache(tmp_path / "root", package_dirs=[package])
    assert cache.fill(compile_into)
    (where,) = compiled
    assert where is not None
    assert where.parent == tmp_path / "root"
    assert where != cache.path
    assert not where.exists()  # the scratch folder became the cache
    assert cache.is_warm
    copied = cache.path / numba_subpath(package)
    assert sorted(p.name for p in copied.iterdir()) == ["f-1.py311.1.nbc", "f-1.py311.nbi"]
    assert (copied / "f-1.py311.nbi").read_bytes() == b"index"  # what this warm-up compiled
    assert cache.fill(compile_into)
    assert len(compiled) == 1  # warm: not compiled again


def test_prune_removes_other_codes_caches_unused_for_long_and_nothing_else(
    tmp_path: Path,
) -> None:
    package = _package(tmp_path)
    root = tmp_path / "root"
    cache = KernelCache(root, package_dirs=[package])
    assert cache.fill(lambda where: True)
    old, recent, filling = "a" * 32, "b" * 32, "c" * 32
    for key in (old, recent, filling):
        (root / key).mkdir()
        (root / key / ".warm").touch()
        (root / f"{key}.lock").touch()
    (root / f"{old}.new-0123456789ab").mkdir()  # a fill that died
    (root / "notes").mkdir()  # not ours: a root shared with other files
    (root / f"{'d' * 31}").mkdir()  # not a key either
    month_ago = time.time() - 31 * 86_400
    for path in (
        root / old / ".warm",
        root / f"{old}.new-0123456789ab",
        root / filling / ".warm",
        root / "notes",
        cache.path / ".warm",
    ):
        os.utime(path, (month_ago, month_ago))
    # Another process fills `filling`: its lock is held, so it is left alone.
    with (root / f"{filling}.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = cache.prune()
    assert sorted(removed) == [old, f"{old}.new-0123456789ab"]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [
            cache.key,
            f"{cache.key}.lock",
            f"{old}.lock",
            recent,
            f"{recent}.lock",
            filling,
            f"{filling}.lock",
            "notes",
            "d" * 31,
        ]
    )
    assert cache.is_warm  # this code's own cache stays, however long unused


def test_copying_a_cache_for_a_job_marks_it_used(tmp_path: Path) -> None:
    package = _package(tmp_path)
    cache = KernelCache(tmp_path / "root", package_dirs=[package])
    assert cache.fill(lambda where: True)
    month_ago = time.time() - 31 * 86_400
    os.utime(cache.path / ".warm", (month_ago, month_ago))
    assert cache.copy_to(tmp_path / "job")
    assert (cache.path / ".warm").stat().st_mtime > month_ago + 30 * 86_400
    # So a runner of other code keeps it.
    other = KernelCache(tmp_path / "root", package_dirs=[_package(tmp_path / "other")])
    assert other.key != cache.key
    assert other.prune() == []
