"""The runner: takes submitted jobs and runs each one's script in a sandbox, as nmpiexec does.

    submitted --claim--> validated --started--> running --exit 0--> finished
                                                    \\--crash, limit, cancel, lost--> error

One dispatcher thread claims a job whenever a slot is free (woken at once by a submission in
the same process, else polling); each job is supervised by a thread of its own, because the
script is a child process whose output is read with blocking calls. A heartbeat thread keeps
the jobs' heartbeats and ends as error every job whose runner is gone (a process on this host
that no longer exists, or any runner silent for `stale_s`).

A job's life on disk: `<jobs_dir>/<id>/` is its working directory (code, `spynnaker.cfg`,
everything it writes); at the end its outputs are the files that were not there before the
script ran (less `*.pyc`, `reports/` and `application_generated_data_files/`), plus
`reports.zip` of `reports/`. The directory stays: the outputs are served from it.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import importlib.util
import json
import logging
import mimetypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jobqueue import shims
from jobqueue.errors import SandboxUnavailableError
from jobqueue.gateway import Gateway
from jobqueue.kernel_cache import UNUSED_DAYS, KernelCache, default_root
from jobqueue.sandbox import BWRAP_ENVIRONMENT, Limits, bwrap_path, sandboxed_command
from jobqueue.source import SourceError, fetch_inputs, prepare
from jobqueue.standby import Standby, StandbyPool
from jobqueue.store import JobStore, OutputFile, error_block
from jobqueue.usage import UsageMonitor, core_hours

__all__ = ["Runner", "RunnerConfig"]

log = logging.getLogger("allotment.batch")

_SKIPPED_DIRS = {"reports", "application_generated_data_files", "__pycache__"}
_WARM_UP_WAIT_S = 180.0
_JOB_NUMBA_CACHE = ".numba-cache"
_SETUP_KEYS = (
    "spynnaker_version",
    "spinnaker_tools_version",
    "extra_pip_installs",
    "extra_git_repositories",
    "extra_makes",
    "extra_python_setups",
)
"""The SpiNNaker executor's setup.bash keys, which install or rebuild software before a job."""
_RELAY = Path(__file__).with_name("relay.py")
"""Run inside the sandbox: the allocation server's address, relayed to the runner's gateway."""
_SANDBOX_SERVER_HOST = "127.0.0.1"
"""Where a job's script finds the allocation server (the relay, in its own network)."""
_SANDBOX_GATEWAY = "/tmp/.allotment-gateway.sock"
"""The gateway's socket inside the sandbox."""
_MAX_LOG_CHARS = 10_000_000
"""The first characters of a job's log that are kept."""
_LOG_TAIL_CHARS = 1_000_000
"""And the last: the end of a longer log (a traceback, why the job was stopped)."""
_MAX_JOB_ENTRIES = 20_000
"""Files and folders one job may make in its directory (empty files pass the byte limit,
yet each costs the host an inode, the runner a look at every heartbeat, the job an output)."""
_LOG_WRITE_CHARS_PER_S = 1_000_000
"""How much log a running job writes to the database a second, at most (a log up to about
500 k characters still goes every half second; one of 10 M, every 10 s)."""


@dataclass(frozen=True)
class RunnerConfig:
    """How a runner runs jobs.

    Attributes:
        jobs_dir: the directory of the jobs' working directories.
        n_slots: jobs run at once by this runner.
        platform: the hardware_platform this runner takes.
        default_timeout_h: wall-time limit when hardware_config has no "timeout" (hours).
        cpu_s: CPU-time limit of a job's processes.
        memory_bytes: address-space limit of each of a job's processes.
        output_bytes: limit on the total size of what a job writes (and on any one file).
        spalloc_host: the allocation server the scripts' PyNN backend is pointed at (None:
            the backend runs virtually, in the job's process).
        spalloc_port: its port.
        heartbeat_s: how often a running job's log and heartbeat are written.
        stale_s: a job whose runner has been silent this long is ended as error.
        poll_s: how often to look for work submitted through another process.
        is_warming_up: compile the PyNN backend's kernels at start, unless the shared cache
            of this code is warm already (`jobqueue.kernel_cache`); each job gets a copy.
        kernel_cache_dir: the root of the shared kernel caches (None: `default_root()`).
        standby_jobs: powered allocations kept ready on the allocation server and handed
            to starting jobs (`jobqueue.standby`); 0 for none.
        standby_boards: boards of each standby allocation.
    """

    jobs_dir: Path
    n_slots: int = 2
    platform: str = "SpiNNaker"
    default_timeout_h: float = 24.0
    cpu_s: int = 24 * 3600
    memory_bytes: int = 8 * 1024**3
    output_bytes: int = 1024**3
    spalloc_host: str | None = None
    spalloc_port: int = 22244
    heartbeat_s: float = 0.5
    stale_s: float = 15.0
    poll_s: float = 1.0
    is_warming_up: bool = True
    kernel_cache_dir: Path | None = None
    standby_jobs: int = 1
    standby_boards: int = 1
    python: str = field(default=sys.executable)


@dataclass
class _Run:
    """What the supervisor knows about one job while it runs."""

    job: dict[str, Any]
    workdir: Path
    chunks: list[str] = field(default_factory=list)
    standby: Standby | None = None
    gateway_socket: Path | None = None
    """Where the runner's gateway listens for the job's connections, while it runs."""
    n_entries_before: int = 0
    """Files and folders in the job's directory before its script ran (its code, inputs)."""
    n_chars: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    tail: collections.deque[str] = field(default_factory=collections.deque)
    n_tail_chars: int = 0
    n_kept_chars: int = 0

    def append(self, text: str) -> None:
        """Keep the log's first `_MAX_LOG_CHARS` characters and its last `_LOG_TAIL_CHARS`
        (where a traceback or the reason a job was stopped is); what lies between is left
        out, and `text` says how much."""
        with self.lock:
            self.n_chars += len(text)
            room = _MAX_LOG_CHARS - self.n_kept_chars
            if room > 0:
                self.chunks.append(text[:room])
                self.n_kept_chars += min(room, len(text))
                text = text[room:]
            if text:
                self.tail.append(text)
                self.n_tail_chars += len(text)
                while self.n_tail_chars - len(self.tail[0]) >= _LOG_TAIL_CHARS:
                    self.n_tail_chars -= len(self.tail.popleft())

    def text(self) -> str:
        with self.lock:
            head = "".join(self.chunks)
            if not self.tail:
                return head
            tail = "".join(self.tail)[-_LOG_TAIL_CHARS:]
            left_out = self.n_chars - len(head) - len(tail)
            if left_out <= 0:
                return head + tail
            return f"{head}\n[... {left_out} characters of the log left out ...]\n{tail}"


class Runner:
    """Runs jobs from a JobStore until `stop()`; start it with `start()`."""

    def __init__(self, store: JobStore, config: RunnerConfig) -> None:
        self.store = store
        self.config = config
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._slots = threading.Semaphore(config.n_slots)
        self._threads: list[threading.Thread] = []
        self._running: dict[int, _Run] = {}
        self._running_lock = threading.Lock()
        self._usage = UsageMonitor(config.spalloc_host, config.spalloc_port)
        self._standby = StandbyPool(
            config.spalloc_host,
            config.spalloc_port,
            owner=f"nmpi-standby {self.runner_id}",
            n_jobs=config.standby_jobs,
            n_boards=config.standby_boards,
        )
        self._gateway = (
            None
            if config.spalloc_host is None
            else Gateway(config.spalloc_host, config.spalloc_port)
        )
        self._socket_dir: Path | None = None
        self._shims = shims.install(config.jobs_dir.parent / f".{config.jobs_dir.name}-shims")
        self._kernels = KernelCache(config.kernel_cache_dir or default_root())
        self._warmed = threading.Event()
        # what the job's Python needs besides the system's: nothing more of the host
        self._visible = _visible_directories(
            [
                self._shims,
                Path(sys.prefix),
                Path(sys.base_prefix),
                *_library_path(),
                Path(config.python).parent,
                Path(config.python).resolve().parent,
                *_package_directories(_JOB_PACKAGES),
                _RELAY.parent,
            ],
            keep_out=[Path.cwd(), config.jobs_dir],
        )

    def __repr__(self) -> str:
        return f"<Runner {self.runner_id}, {len(self._running)}/{self.config.n_slots} running>"

    def start(self) -> None:
        """Start the dispatcher and heartbeat threads."""
        self.config.jobs_dir.mkdir(parents=True, exist_ok=True)
        if self._gateway is not None:
            # the runner's alone (mode 0700): the jobs' gateway sockets
            self._socket_dir = Path(tempfile.mkdtemp(prefix="allotment-gateway-"))
            self._gateway.start()
        self._usage.start()
        self._standby.start()
        if self.config.is_warming_up and not self._kernels.is_warm:
            thread = threading.Thread(target=self._warm_up, name="batch-warmup", daemon=True)
            thread.start()
        else:
            self._warmed.set()
        threading.Thread(target=self._prune_kernels, name="batch-prune", daemon=True).start()
        for target, name in ((self._dispatch, "batch-dispatch"), (self._beat, "batch-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Look for work now (called after a submission in this process)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop taking jobs, kill the running ones (they end as error) and wait."""
        self._stop.set()
        self._wake.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._standby.stop()
        self._usage.stop()
        if self._gateway is not None:
            self._gateway.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _warm_up(self) -> None:
        """Fill the shared kernel cache (trusted code of ours, outside any job)."""
        try:
            if self._kernels.fill(self._compile_kernels):
                log.info("the PyNN backend's kernels are compiled into %s", self._kernels.path)
        except OSError as error:
            log.warning("the kernel cache %s cannot be filled: %s", self._kernels.root, error)
        finally:
            self._warmed.set()

    def _prune_kernels(self) -> None:
        """Remove the kernel caches of other code that no job has used for a long time."""
        try:
            removed = self._kernels.prune()
        except OSError as error:
            log.warning("old kernel caches in %s cannot be removed: %s", self._kernels.root, error)
            return
        if removed:
            log.info(
                "removed %d kernel cache%s unused for %d days from %s: %s",
                len(removed),
                "" if len(removed) == 1 else "s",
                UNUSED_DAYS,
                self._kernels.root,
                ", ".join(removed),
            )

    def _compile_kernels(self, cache_dir: Path | None) -> bool:
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        if cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = str(cache_dir)
        try:
            subprocess.run(
                [self.config.python, "-m", "jobqueue.warmup"],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=True,
                timeout=900,
            )
        except (subprocess.SubprocessError, OSError) as error:
            if self._stop.is_set():  # stopped with the service: no failure to report
                log.info("warming up the PyNN backend's kernels stopped with the runner")
            else:
                said = getattr(error, "stderr", None) or b""
                last = said.decode("utf-8", "replace").strip().splitlines()[-1:]
                log.warning(
                    "warming up the PyNN backend's kernels failed: %s%s",
                    error,
                    f" ({last[0]})" if last else "",
                )
            return False
        return True

    # dispatching ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        # Jobs wait for the warm-up (once per version of the code): compiling the kernels in
        # the first jobs too would only share the same cores among more compilers.
        deadline = time.monotonic() + _WARM_UP_WAIT_S
        while not self._warmed.wait(0.2) and not self._stop.is_set():
            if time.monotonic() > deadline:
                break
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=self.config.poll_s):
                continue
            job = None
            try:
                job = self.store.claim(self.runner_id, self.config.platform)
            except Exception:
                log.exception("claiming a job failed")
            if job is None:
                self._slots.release()
                self._wake.wait(self.config.poll_s)
                self._wake.clear()
                continue
            thread = threading.Thread(
                target=self._supervise, args=(job,), name=f"batch-job-{job['id']}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _beat(self) -> None:
        """Keep the heartbeats of jobs between log flushes; end jobs whose runner is gone."""
        while not self._stop.wait(max(self.config.stale_s / 3, 0.2)):
            try:
                # Every job this runner holds, whatever it is doing (fetching its code,
                # unpacking, collecting its outputs): only a runner gone stops beating.
                with self._running_lock:
                    held = list(self._running)
                for job_id in held:
                    self.store.heartbeat(job_id, self.runner_id)
                lost = self.store.reap_lost(self.config.stale_s, runner_ids=self._dead_local())
                if lost:
                    log.warning("jobs %s ended as error: their runner is gone", lost)
                    self.wake()
            except Exception:
                log.exception("checking for lost jobs failed")

    def _dead_local(self) -> list[str]:
        """Runner ids of processes on this host that no longer exist."""
        host = socket.gethostname()
        dead = []
        for runner_id in self.store.active_runner_ids():
            name, _, rest = runner_id.partition(":")
            pid_text = rest.partition(":")[0]
            if name != host or not pid_text.isdigit() or runner_id == self.runner_id:
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                dead.append(runner_id)
            except PermissionError:
                pass
        return dead

    # one job ------------------------------------------------------------------------------------

    def _supervise(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        workdir = self.config.jobs_dir / str(job_id)
        run = _Run(job, workdir)
        owner = f"{job['user_id']} nmpi-job-{job_id}"
        with self._running_lock:
            self._running[job_id] = run
        self._usage.watch(owner)
        status, reason = "error", "the runner failed"
        provenance: dict[str, Any] = {"runner": self.runner_id}
        outputs: list[OutputFile] = []
        try:
            status, reason, outputs = self._run_job(run, owner)
        except Exception as error:
            log.exception("job %d failed in the runner", job_id)
            reason = f"the runner failed: {error}"
        finally:
            try:
                self._end(job_id, run, owner, status, reason, provenance, outputs)
            finally:
                # whatever failed in recording the end, the slot is the runner's again
                with self._running_lock:
                    self._running.pop(job_id, None)
                self._slots.release()
                self._wake.set()

    def _end(
        self,
        job_id: int,
        run: _Run,
        owner: str,
        status: str,
        reason: str,
        provenance: dict[str, Any],
        outputs: list[OutputFile],
    ) -> None:
        """Give back the job's boards, write its log file and record how it ended."""
        workdir = run.workdir
        if run.gateway_socket is not None and self._gateway is not None:
            # nothing more reaches the allocation server from the job
            try:
                self._gateway.close(job_id)
            except Exception:
                log.exception("the gateway of job %d did not close", job_id)
            with contextlib.suppress(OSError):
                run.gateway_socket.unlink()
        is_standby_used = True
        if run.standby is not None:
            is_standby_used = self._standby.finish(run.standby)
            provenance["standby_spalloc_job"] = run.standby.job_id
            provenance["standby_used"] = is_standby_used
        board_seconds = self._usage.release(
            owner, is_charging_handed=is_standby_used, destroy_reason=f"batch job {job_id} ended"
        )
        provenance["board_seconds"] = board_seconds
        text = run.text()
        if status == "error":
            text += error_block(reason)
        try:
            if workdir.is_dir():
                # the log is an output file too, as on the portal
                log_name = f"output_{job_id}.txt"
                _write_fresh(workdir / log_name, text.encode("utf-8", "replace"))
                outputs = [*outputs, _describe(workdir, log_name)]
        except OSError as error:
            log.warning("the log file of job %d could not be written: %s", job_id, error)
        try:
            self.store.finish(
                job_id,
                self.runner_id,
                status=status,
                log=text,
                outputs=outputs,
                provenance=provenance,
                core_hours=core_hours(board_seconds),
            )
        except Exception:
            log.exception("recording the end of job %d failed", job_id)

    def _run_job(self, run: _Run, owner: str) -> tuple[str, str, list[OutputFile]]:
        job = run.job
        workdir = run.workdir
        if workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        try:
            prepared = prepare(
                job["code"], job["command"], workdir, max_unpacked_bytes=self.config.output_bytes
            )
            if not prepared.cwd.resolve().is_relative_to(workdir.resolve()):
                raise SourceError("the job's folder points outside the job")
            inputs = [item["url"] for item in job["input_data"] or () if "url" in item]
            if inputs:
                names = fetch_inputs(inputs, workdir, max_bytes=self.config.output_bytes)
                run.append(f"allotment: input data downloaded: {', '.join(names)}\n")
        except SourceError as error:
            return "error", str(error), []
        run.standby = self._standby.take()
        if run.standby is not None:
            self._usage.hand_over(
                owner, run.standby.job_id, run.standby.handed_at, run.standby.n_boards
            )
            log.info("job %d is handed standby spalloc job %d", job["id"], run.standby.job_id)
        self._write_cfg(prepared.cwd, owner, run.standby)
        # A copy: a job can never change what the next one loads.
        self._kernels.copy_to(workdir / _JOB_NUMBA_CACHE)
        before = _files(workdir)
        run.n_entries_before = _size(workdir)[1]
        config = job["hardware_config"] or {}
        setup_keys = [key for key in _SETUP_KEYS if key in config]
        if setup_keys:
            run.append(
                f"allotment: hardware_config {', '.join(setup_keys)} not acted on: jobs run on"
                " allotment's PyNN backend as installed, with no setup script (each is in the"
                " environment only)\n"
            )
        try:
            timeout_h = float(config.get("timeout", self.config.default_timeout_h))
        except (TypeError, ValueError):
            return (
                "error",
                f"hardware_config timeout {config.get('timeout')!r} is not a number of hours",
                [],
            )
        tokens = shlex.split(prepared.command.replace("{system}", "spiNNaker"))
        argv = [self.config.python, *tokens]
        try:
            bwrap_path()
        except SandboxUnavailableError as error:
            return "error", str(error), []
        db = self.store.database_path
        hidden = [] if db is None else [db, f"{db}-wal", f"{db}-shm", f"{db}-journal", f"{db}.lock"]
        sockets = {}
        if self._gateway is not None:
            assert self._socket_dir is not None, "start() the runner first"
            gateway_socket = self._socket_dir / f"{job['id']}.sock"
            allowed = () if run.standby is None else (run.standby.job_id,)
            try:
                self._gateway.open(job["id"], owner, gateway_socket, allowed)
            except OSError as error:
                return "error", f"the allocation server cannot be reached from the job: {error}", []
            run.gateway_socket = gateway_socket
            sockets[_SANDBOX_GATEWAY] = gateway_socket
            argv = [
                self.config.python,
                str(_RELAY),
                _SANDBOX_SERVER_HOST,
                str(self.config.spalloc_port),
                _SANDBOX_GATEWAY,
                "--",
                *argv,
            ]
        command, fds = sandboxed_command(
            argv,
            workdir=workdir,
            cwd=prepared.cwd,
            jobs_root=self.config.jobs_dir,
            hidden_files=hidden,
            visible=self._visible,
            env=self._environment(job, prepared.cwd),
            tmp_bytes=self.config.output_bytes,
            sockets=sockets,
        )
        # A job that asks for its own time limit gets as much CPU time (else the runner's).
        cpu_s = max(self.config.cpu_s, int(timeout_h * 3600))
        limits = Limits(
            cpu_s=cpu_s,
            memory_bytes=self.config.memory_bytes,
            file_bytes=self.config.output_bytes,
        )
        try:
            process = subprocess.Popen(
                command,
                cwd=prepared.cwd,
                env=dict(BWRAP_ENVIRONMENT),  # the job's own is set inside the sandbox
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=fds,
                preexec_fn=limits.preexec(),
            )
        finally:
            for fd in fds:
                os.close(fd)
        self.store.heartbeat(job["id"], self.runner_id, status="running")
        reason = self._watch(run, process, timeout_h * 3600.0)
        status = "finished" if reason is None else "error"
        if reason is None and process.returncode != 0:
            status, reason = "error", _exit_reason(process.returncode, cpu_s)
        outputs = _collect_outputs(workdir, before, prepared.cwd)
        return status, reason or "", outputs

    def _watch(self, run: _Run, process: subprocess.Popen[bytes], timeout_s: float) -> str | None:
        """Stream the log until the process ends; None, or why it was stopped."""
        assert process.stdout is not None
        reader = threading.Thread(
            target=_read_into, args=(process.stdout, run), name="batch-log", daemon=True
        )
        reader.start()
        started = time.monotonic()
        written = -1
        beaten = logged = started
        reason: str | None = None
        while True:
            try:
                process.wait(timeout=self.config.heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._stop.is_set():
                reason = "the runner was stopped while the job ran"
            elif time.monotonic() - started > timeout_s:
                reason = f"the job ran past its time limit of {timeout_s / 3600:g} hours"
            elif (used := _size(run.workdir, run.n_entries_before + _MAX_JOB_ENTRIES))[
                0
            ] > self.config.output_bytes:
                reason = f"the job wrote more than its limit of {self.config.output_bytes} bytes"
            elif used[1] - run.n_entries_before > _MAX_JOB_ENTRIES:
                reason = f"the job made more than its limit of {_MAX_JOB_ENTRIES} files and folders"
            elif (is_log_due := self._is_log_due(run, written, logged)) or (
                time.monotonic() - beaten > self.config.stale_s / 5
            ):
                # the log when it grew (each write is of the whole log: a long one is
                # written less often), else a bare heartbeat now and then
                text = run.text() if is_log_due else None
                if is_log_due:
                    written = run.n_chars
                    logged = time.monotonic()
                beaten = time.monotonic()
                status = self.store.heartbeat(run.job["id"], self.runner_id, log=text)
                if status not in ("validated", "running"):
                    reason = f"the job was {status} while it ran"
            if reason is not None:
                _kill(process)
                break
        _kill(process)
        reader.join(timeout=5)
        return reason  # (the log's Error: block says it, once)

    @staticmethod
    def _is_log_due(run: _Run, written: int, logged: float) -> bool:
        """Whether the log grew since it was last written, and that was long enough ago for
        its size: at most `_LOG_WRITE_CHARS_PER_S` a second, so a chatty job's log of
        megabytes is not rewritten whole every half second."""
        if run.n_chars == written:
            return False
        size = min(run.n_chars, _MAX_LOG_CHARS + _LOG_TAIL_CHARS)
        return time.monotonic() - logged >= size / _LOG_WRITE_CHARS_PER_S

    def _write_cfg(self, cwd: Path, owner: str, standby: Standby | None) -> None:
        """Point the PyNN backend at the allocation server, as the executor's spynnaker.cfg.

        A standby handed over is named too (allotment's keys `spalloc_job` and
        `spalloc_job_owner`): the backend runs on it when the network fits its boards.
        """
        if self.config.spalloc_host is None:
            lines = ["[Machine]", "virtual_board = True"]
        else:
            lines = [
                "[Machine]",
                # the relay inside the sandbox, to the runner's gateway (jobqueue.gateway)
                f"spalloc_server = {_SANDBOX_SERVER_HOST}",
                f"spalloc_port = {self.config.spalloc_port}",
                f"spalloc_user = {owner}",
                "virtual_board = False",
            ]
            if standby is not None:
                lines += [f"spalloc_job = {standby.job_id}", f"spalloc_job_owner = {standby.owner}"]
        _write_fresh(cwd / "spynnaker.cfg", ("\n".join(lines) + "\n").encode())

    def _environment(self, job: dict[str, Any], cwd: Path) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cwd),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": str(self._shims),
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": str(cwd / ".matplotlib"),
            "NMPI_JOB_ID": str(job["id"]),
            "NUMBA_CACHE_DIR": str(self.config.jobs_dir / str(job["id"]) / _JOB_NUMBA_CACHE),
        }
        for key, value in (job["hardware_config"] or {}).items():
            if isinstance(key, str) and key.isidentifier():
                env[key] = value if isinstance(value, str) else json.dumps(value)
        return env


def _read_into(stream: Any, run: _Run) -> None:
    # one decoder for the whole stream: a character split between two reads stays whole
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in iter(lambda: stream.read1(65536), b""):
        run.append(decoder.decode(chunk))
    run.append(decoder.decode(b"", final=True))


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the job's whole session (bwrap's pid namespace goes with its first process)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.wait(timeout=10)


def _exit_reason(returncode: int, cpu_s: int) -> str:
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if signum == signal.SIGXCPU:
        return f"the job used more than its CPU time limit of {cpu_s} s"
    if signum:
        return f"Python exited with signal ({signum})"
    return f"Python exited with a non-zero code ({returncode})"


def _files(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found.add(path.relative_to(root).as_posix())
    return found


def _size(root: Path, limit: int = 10**9) -> tuple[int, int]:
    """The bytes of the files under `root`, and how many entries it holds (up to one past
    `limit`: the walk stops there)."""
    total = 0
    n_entries = 0
    for path in root.rglob("*"):
        n_entries += 1
        if n_entries > limit:
            break
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total, n_entries


def _skipped(relative: str) -> bool:
    parts = relative.split("/")
    return relative.endswith(".pyc") or any(p in _SKIPPED_DIRS for p in parts[:-1])


def _collect_outputs(workdir: Path, before: set[str], cwd: Path) -> list[OutputFile]:
    """The files the script wrote, plus reports.zip (in the job's directory) of the
    reports/ folder where it ran (`cwd`: the job's directory, or the clone of its
    repository)."""
    reports = cwd / "reports"
    if reports.is_dir() and not reports.is_symlink() and not cwd.is_symlink():
        with (
            _open_fresh(workdir / "reports.zip") as out,
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive,
        ):
            for path in sorted(reports.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    archive.write(path, path.relative_to(cwd).as_posix())
    found: list[OutputFile] = []
    for relative in sorted(_files(workdir) - before):
        if _skipped(relative) or relative.startswith((".matplotlib/", f"{_JOB_NUMBA_CACHE}/")):
            continue
        if len(found) >= _MAX_JOB_ENTRIES:  # (a job stopped for making too many)
            log.warning("only the first %d outputs of %s are listed", len(found), workdir)
            break
        try:
            relative.encode("utf-8")
        except UnicodeEncodeError:  # a name of bytes that are no UTF-8: no URL can name it
            log.warning("output %r of %s is not listed: its name is not UTF-8", relative, workdir)
            continue
        found.append(_describe(workdir, relative))
    return found


def _open_fresh(path: Path) -> IO[bytes]:
    """A new file at `path` for the runner to write, never through what a job left there:
    whatever is there (a symlink out of the job, a FIFO, a folder) is removed first, and
    the file is made anew without following links."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "wb")


def _write_fresh(path: Path, data: bytes) -> None:
    with _open_fresh(path) as out:
        out.write(data)


def _describe(workdir: Path, relative: str) -> OutputFile:
    """An output file's size, SHA-1 and content type."""
    path = workdir / relative
    digest = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    content_type = mimetypes.guess_type(relative)[0] or "application/octet-stream"
    return OutputFile(relative, path.stat().st_size, digest.hexdigest(), content_type)


_JOB_PACKAGES = ("allotment", "toolchain", "machine_models", "protocol")
"""allotment's packages a job's script imports (through the PyNN backend)."""


def _library_path() -> list[Path]:
    """The runner's `sys.path` directories inside its Python's prefixes (never the working
    directory `python -m` puts first: it holds the service's own files)."""
    prefixes = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    found = []
    for entry in sys.path:
        path = Path(entry).resolve() if entry else None
        if path is not None and path.is_dir() and any(path.is_relative_to(p) for p in prefixes):
            found.append(path)
    return found


def _visible_directories(candidates: list[Path], keep_out: list[Path]) -> list[Path]:
    """The candidates, less any that holds (or is) a directory of the service's own: the
    working directory it was started in (its database, its dispatch folder) and the jobs'
    directories. One left out is logged."""
    kept = []
    guarded = [p.resolve() for p in keep_out]
    # each as given and as it resolves: the job is handed paths as given (its Python, the
    # relay, the shims), and a link among them must lead somewhere inside too
    both = [path for c in candidates for path in (c.absolute(), c.resolve())]
    for candidate in dict.fromkeys(both):
        if any(g.is_relative_to(candidate) for g in guarded):
            log.warning(
                "%s holds the service's own files: it is not made visible to jobs", candidate
            )
            continue
        kept.append(candidate)
    return kept


def _package_directories(names: tuple[str, ...]) -> list[Path]:
    """Where the named packages are imported from.

    An editable install finds them through an import hook, not through `sys.path`, so a
    source tree under the sandbox's private /tmp must be bound back by its own paths.
    """
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found += [Path(location) for location in spec.submodule_search_locations]
    return found
