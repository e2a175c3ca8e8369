"""The batch-job service: the EBRAINS job queue API v3 (what the `nmpi` client speaks), its
runner that runs each job's script in a sandbox, the web job manager and the batch CLI.

It reaches the allocation server only over `protocol` (a job's script reaches it through the
PyNN backend, `toolchain.pynn`); its tables (`nmpi_*`) live in the allocation server's
database. See docs/batch.md.
"""

from jobqueue.errors import JobQueueError
from jobqueue.runner import Runner, RunnerConfig
from jobqueue.store import Identity, JobStore

__all__ = ["Identity", "JobQueueError", "JobStore", "Runner", "RunnerConfig"]
