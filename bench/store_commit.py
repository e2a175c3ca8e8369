"""Group-commit throughput of the store: many concurrent writers staging and flushing.

Each of N writers (asyncio tasks, default 64) loops for a fixed time: stage one job record,
`await flush()`. Changes staged while a commit is in flight share the next transaction, so
the figures show how commits batch as concurrency grows. Prints one JSON line.

    python bench/store_commit.py --writers 64 --seconds 5
    python bench/store_commit.py --db postgresql+asyncpg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from allocator.jobs import JobRecord
from allocator.store import PutJob, Store


async def _writer(store: Store, first_id: int, stride: int, deadline: float) -> int:
    n = 0
    job_id = first_id
    while time.perf_counter() < deadline:
        store.stage(
            PutJob(JobRecord(job_id=job_id, owner="bench", created_at=0.0, keepalive_s=60.0))
        )
        await store.flush()
        job_id += stride
        n += 1
    return n


async def run(db_url: str, n_writers: int, seconds: float) -> dict[str, object]:
    store = await Store.open(db_url)
    try:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(_writer(store, i + 1, n_writers, deadline) for i in range(n_writers))
        )
        elapsed_s = time.perf_counter() - started
        stats = store.stats
        return {
            "bench": "store_commit",
            "database": db_url.split(":", 1)[0],
            "writers": n_writers,
            "seconds": round(elapsed_s, 3),
            "changes": sum(counts),
            "changes_per_s": round(sum(counts) / elapsed_s, 1),
            "commits": stats.n_commits,
            "commits_per_s": round(stats.n_commits / elapsed_s, 1),
            "changes_per_commit": round(stats.n_changes / max(stats.n_commits, 1), 1),
            "mean_commit_ms": round(1000 * stats.commit_s_total / max(stats.n_commits, 1), 3),
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--db", default=None, help="database URL (default: a temporary SQLite file)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.db or f"sqlite:///{Path(scratch) / 'bench.db'}"
        print(json.dumps(asyncio.run(run(url, args.writers, args.seconds))))


if __name__ == "__main__":
    main()
