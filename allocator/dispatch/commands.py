"""The dispatch command family: load an image onto a job, run it, follow it, fetch its results.

It owns dispatch's state (one `_Job` per job that ever got an image) and reaches the rest of
the server through four small hooks, so that it does not depend on how the service is cut:

    JobDirectory      job records, machines, out-of-service links (read only)
    boards_powered    the service's job listener: boards switched or reset (noted)
    on_jobs_changed   the service's change listener: destroyed, powered off, reset (acted on)
    handlers()        the commands, registered with the service by name

A job's durable dispatch state is its folder (`allocator.dispatch.storage`): every change a
reply depends on is written (temporary file, fsync, rename) on the family's own file thread
before the reply goes out. Nothing heavy runs on the event loop: uploads are hashed and
written by `ImageUpload`'s thread, images are validated on a thread, runs go to the
`WorkerPool`'s processes, results are read on the file thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import secrets
import shutil
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from allocator.dispatch import storage
from allocator.dispatch.errors import (
    DispatchError,
    ImageNotStoredError,
    ImageRejectedError,
    ImageTooLargeError,
    JobNotReadyError,
    NoImageError,
    NoResultsError,
    RunBusyError,
    RunNotStoredError,
    StateNotKeptError,
    TokenError,
    UploadError,
)
from allocator.dispatch.pool import RunTicket, WorkerPool
from allocator.dispatch.settings import DispatchSettings
from allocator.dispatch.storage import (
    IMAGE_FILE,
    RESULTS_FILE,
    STATE_FILE,
    ImageInfo,
    JobFolderRecord,
    RunRecord,
    job_folder,
)
from allocator.dispatch.topology import TopologySpec, job_topology
from allocator.dispatch.upload import ImageUpload
from allocator.dispatch.validation import validated
from allocator.dispatch.worker import PreloadOrder, RunOrder
from allocator.jobs import JobRecord, JobState
from allocator.machine import Machine
from machine_models.errors import MachineModelError
from machine_models.geometry import BoardXYZ, ChipXY, Link
from machine_models.results_file import index_bytes_needed, read_index
from protocol.codec import ReplyWithBody, encode_notification, encode_reply
from protocol.dispatch import (
    DIGEST_TRAILER_BYTES,
    MAX_FETCH_BYTES,
    PART_ALL,
    PART_INDEX,
    FetchResultsArgs,
    ImageLoaded,
    LoadImageArgs,
    ResultsChunk,
    RunProgress,
    RunState,
    RunStatus,
    RunStatusArgs,
    StartRunArgs,
    StopRunArgs,
    UploadReady,
)
from protocol.events import RunEvent

__all__ = ["DispatchCommands", "DispatchObserver", "JobDirectory", "RunPublisher"]

log = logging.getLogger("allotment.dispatch")

_T = TypeVar("_T")
_PROGRESS_EVENT_S: Final = 1.0
"""At most one MQTT progress event per run this often (state changes always go out)."""
_HEAD_BYTES: Final = 64 * 1024


class JobDirectory(Protocol):
    """What dispatch reads of the service's state."""

    def job_record(self, job_id: int) -> JobRecord | None: ...
    def machine(self, name: str) -> Machine | None: ...
    def out_of_service_links(self, machine_name: str) -> list[tuple[BoardXYZ, Link]]: ...


class DispatchObserver(Protocol):
    """What dispatch counts (`allocator.dispatch.metrics.DispatchMetrics`)."""

    def set_runs(self, n_queued: int, n_running: int) -> None: ...
    def set_steps_per_s(self, steps_per_s: float) -> None: ...
    def run_ended(self, state: RunState) -> None: ...
    def worker_crashed(self) -> None: ...
    def image_accepted(self, n_bytes: int) -> None: ...


class RunPublisher(Protocol):
    """Where run events go (`allocator.events.EventPublisher`)."""

    def publish_run(self, event: RunEvent) -> None: ...


class _Watcher(Protocol):
    """A connection that receives progress notifications (`allocator.server.Connection`)."""

    is_closed: bool
    transport: Any


@dataclass(eq=False)
class _Job:
    """Dispatch's state of one job: the durable record plus what lives only in memory."""

    record: JobFolderRecord
    ticket: RunTicket | None = None
    status: RunStatus | None = None
    watchers: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    is_uploading: bool = False
    saving: RunTicket | None = None
    """The finished run whose state a worker is saving now, while it still counts."""
    handing_over: RunTicket | None = None
    """A keep-state load's hand-over of the state to its image, while a worker does it."""
    machine: str | None = None
    progress_at: float = 0.0
    progress_steps: int = 0
    steps_per_s: float = 0.0
    event_at: float = 0.0
    last_save: asyncio.Future[None] | None = None

    @property
    def job_id(self) -> int:
        return self.record.job_id

    @property
    def last_run(self) -> RunRecord | None:
        return self.record.runs[-1] if self.record.runs else None

    def status_word(self) -> str:
        """What the latest run is doing, in a word (for messages)."""
        status = self.status
        return "queued" if status is None or status.state is None else status.state.value


class DispatchCommands:
    """The dispatch extension: handlers, the change listener, and the worker pool's events.

    Args:
        settings: the ``[dispatch]`` table.
        jobs: read access to the service's jobs and machines.
        observer: the metrics.
        publisher: the MQTT event publisher.
        pool: the worker pool (default: one built from the settings).
        wall_clock: Unix seconds, for the grace time of results.
    """

    def __init__(
        self,
        settings: DispatchSettings,
        jobs: JobDirectory,
        *,
        observer: DispatchObserver | None = None,
        publisher: RunPublisher | None = None,
        pool: WorkerPool | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._directory = Path(settings.directory)
        self._jobs_of_service = jobs
        self._observer = observer
        self._publisher = publisher
        self._wall_clock = wall_clock
        self.pool = pool or WorkerPool(
            settings.workers,
            memory_bytes=settings.run_memory_bytes,
            wall_s=settings.run_wall_s,
            nice=settings.worker_nice,
            is_starting_with_server=settings.start_workers == "with_server",
            observer=observer,
        )
        self._jobs: dict[int, _Job] = {}
        self._uploading: set[int] = set()
        self._uploading_bytes: dict[int, int] = {}
        """The announced sizes of the images being received, by job."""
        # Jobs whose boards were switched since the last commit: job id -> switched on.
        self._power_cycled: dict[int, bool] = {}
        # One thread for every file operation of the family: records are written in the
        # order they were changed, and the event loop never waits on the disk.
        self._file_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatch-files")
        self._restored = asyncio.Event()
        self._task_group: asyncio.TaskGroup | None = None
        self._dead_chips: dict[str, list[ChipXY]] = {}
        for machine, x, y in settings.dead_chips:
            self._dead_chips.setdefault(machine, []).append(ChipXY(x, y))

    def __repr__(self) -> str:
        return f"<DispatchCommands jobs={len(self._jobs)} pool={self.pool!r}>"

    def handlers(self) -> dict[str, Callable[[Any, Any], Awaitable[Any]]]:
        """The extension's commands by name, for the service's command table."""
        return {
            "load_image": self.load_image,
            "start_run": self.start_run,
            "run_status": self.run_status,
            "stop_run": self.stop_run,
            "fetch_results": self.fetch_results,
        }

    # --- lifetime -----------------------------------------------------------------------

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Restore the job folders, then run the pool and the clean-up until cancelled.

        Returns at once, having logged why, if the dispatch directory cannot be made.
        """
        try:
            try:
                await self._in_thread(self._directory.mkdir, 0o700, True, True)
            except OSError as error:
                log.error("cannot start: dispatch directory %s: %s", self._directory, error)
                return
            async with asyncio.TaskGroup() as tg:
                self._task_group = tg
                await self._restore()
                tg.create_task(self.pool.run(), name="dispatch-pool")
                tg.create_task(self._remove_expired(), name="dispatch-expiry")
                self._restored.set()
                if on_started is not None:
                    on_started()
        finally:
            self._task_group = None
            self._file_thread.shutdown(wait=True)

    async def _restore(self) -> None:
        records, unrecorded, unreadable = await self._in_thread(
            storage.read_records, self._directory
        )
        for folder in unrecorded:
            # A first load cut short: its record was never written, nobody got its token.
            log.warning(
                "dispatch folder %s has no record (a first load cut short); removing it", folder
            )
            await self._in_thread(storage.remove_folder, folder)
        for folder, error in unreadable:
            # Kept as it is for the operator: its image, state and results may matter.
            log.error(
                "dispatch folder %s: its record cannot be read (%s); left as it is", folder, error
            )
        now = self._wall_clock()
        for record in records:
            job = _Job(record)
            self._jobs[record.job_id] = job
            last = job.last_run
            if last is not None and not last.state.is_over:
                self._set_last_run(
                    job,
                    state=RunState.FAILED,
                    reason=f"the server restarted while run {last.run_id} was in flight",
                )
            if record.snapshot is not None and record.state_step > 0 and not record.is_state_saved:
                # The worker renames a state into place only once it is whole: one that is
                # there was saved, even if the record saying so did not reach the disk.
                state = job_folder(self._directory, record.job_id) / record.snapshot / STATE_FILE
                if await self._in_thread(state.exists):
                    job.record = job.record.model_copy(update={"is_state_saved": True})
            if record.image is None:
                # An image installed by a load that ended with the server, before its
                # record named it (`storage.install_image`): the job has none.
                await self._in_thread(
                    (job_folder(self._directory, record.job_id) / IMAGE_FILE).unlink, True
                )
            # Only the recorded snapshot is ever continued: others are of runs or state
            # hand-overs that were in flight.
            await self._in_thread(
                storage.remove_old_snapshots,
                job_folder(self._directory, record.job_id),
                job.record.snapshot,
            )
            service_record = self._jobs_of_service.job_record(record.job_id)
            job.machine = None if service_record is None else service_record.machine_name
            remove: Callable[[], None] | None = None
            folder = job_folder(self._directory, record.job_id)
            if service_record is None or not service_record.is_live:
                if record.ended_at is None:
                    job.record = job.record.model_copy(update={"ended_at": now})
            elif record.image is not None and not _is_ready(service_record):
                remove = self._forget_image(job, f"job {record.job_id}'s boards were powered off")
            elif record.image is not None and not await self._in_thread(
                (folder / IMAGE_FILE).exists
            ):
                # (its removal came before its record said so, and the server died between)
                remove = self._forget_image(job, f"job {record.job_id}'s image file is missing")
            job.status = self._status_of_record(job)
            if job.record == record:
                continue  # nothing to write (a full or read-only disk still starts)
            try:
                await self._save(job)
            except OSError as error:
                # What changed here follows from the service's durable state: the next
                # start works it out again (the files stay until it can say so).
                log.error("dispatch folder of job %d cannot be written: %s", record.job_id, error)
            else:
                if remove is not None:
                    remove()

    async def _remove_expired(self) -> None:
        """Remove the folders of jobs ended longer ago than the grace time."""
        grace = self._settings.results_grace_s
        while True:
            now = self._wall_clock()
            for job in list(self._jobs.values()):
                ended = job.record.ended_at
                if ended is not None and ended + grace <= now and job.ticket is None:
                    del self._jobs[job.job_id]
                    await self._in_thread(
                        storage.remove_folder, job_folder(self._directory, job.job_id)
                    )
            await asyncio.sleep(min(60.0, max(0.2, grace / 4)))

    # --- hooks into the service ---------------------------------------------------------

    def job_destroyed(self, record: JobRecord) -> None:
        """The service's job listener: nothing to do yet; `on_jobs_changed` stops the run
        once the destruction is committed."""

    def boards_powered(self, job_id: int, is_on: bool) -> None:
        """The service's job listener: a job's boards are being switched (before commit)."""
        job = self._jobs.get(job_id)
        if job is not None and job.record.image is not None:
            self._power_cycled[job_id] = is_on

    def on_jobs_changed(self, job_ids: Iterable[int], _machines: Iterable[str]) -> None:
        """The service's listener: stop the runs of jobs destroyed, powered off or reset."""
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            is_cycled = self._power_cycled.pop(job_id, None)
            if job is None or job.record.ended_at is not None:
                continue
            record = self._jobs_of_service.job_record(job_id)
            if record is None or not record.is_live:
                why = f"job {job_id} was destroyed"
                if record is not None and record.reason:
                    why += f": {record.reason}"
                self._end_job(job, why)
            elif job.record.image is not None and (is_cycled is not None or not _is_ready(record)):
                what = (
                    "reset" if is_cycled or (is_cycled is None and record.power) else "powered off"
                )
                self._lose_image(job, f"job {job_id}'s boards were {what}")

    def _end_job(self, job: _Job, why: str) -> None:
        self._stop_run(job, RunState.STOPPED, why)
        remove = self._forget_image(job, why)
        job.record = job.record.model_copy(update={"ended_at": self._wall_clock()})
        self._background(self._save(job))
        remove()  # after the record (the file thread keeps the order)

    def _lose_image(self, job: _Job, why: str) -> None:
        self._stop_run(job, RunState.STOPPED, f"{why}; the image is gone, load it again")
        remove = self._forget_image(job, why)
        self._background(self._save(job))
        remove()  # after the record (the file thread keeps the order)

    def _forget_image(self, job: _Job, why: str) -> Callable[[], None]:
        """The boards lost what they held: no image, no state to continue from (`why`).

        Returns what removes the files, to be called once the record saying so is being
        saved: the files go after it, so that a crash between never leaves a record naming
        an image or state that is gone.
        """
        job.saving = None  # a state still being saved is of the image that is gone
        had_state = job.record.state_step > 0 or job.record.state_lost is not None
        job.record = job.record.model_copy(
            update={
                "image": None,
                "topology": None,
                "is_state_saved": False,
                "state_step": 0,
                "state_lost": why if had_state else None,
            }
        )
        folder = job_folder(self._directory, job.job_id)
        return functools.partial(self._submit_file_work, _remove_files, folder, job.record.snapshot)

    def _stop_run(self, job: _Job, state: RunState, reason: str) -> None:
        for ticket in (job.ticket, job.handing_over):
            if ticket is not None:
                self.pool.stop(ticket, state, reason)

    def _background(self, work: Awaitable[None]) -> None:
        """Run a change's save (and what follows it) as a task of the family's group."""
        if self._task_group is not None:
            wrapped = _logged(work)
            try:
                self._task_group.create_task(wrapped)
                return
            except RuntimeError:
                wrapped.close()  # shutting down: the restart marks what was in flight
        if isinstance(work, Coroutine):
            work.close()

    # --- load_image ---------------------------------------------------------------------

    async def load_image(self, args: LoadImageArgs, conn: Any) -> ImageLoaded:
        """Take an image's bytes after a go-ahead, validate it, store it as the job's image."""
        await self._restored.wait()
        job_id = _job_id(args.job_id)
        record = self._ready_record(args.job_id)
        job = self._jobs.get(job_id)
        if job is None or job.record.ended_at is not None:
            if args.owner != record.owner:
                raise TokenError(f"the first load_image of job {job_id} must name the job's owner")
        else:
            self._check_token(job, args.token)
            if job.ticket is not None and job.last_run is not None:
                raise RunBusyError(job_id, job.last_run.run_id, job.status_word())
            if args.is_keeping_state:
                self._require_state(job, "load the image without keep_state")
                _require_not_lost(job)
        if job_id in self._uploading:
            raise DispatchError(f"job {job_id} is already receiving an image")
        if args.n_bytes > self._settings.max_image_bytes:
            raise ImageTooLargeError(job_id, args.n_bytes, self._settings.max_image_bytes)
        # Taken at once, with no wait between the checks and the taking: another load of
        # this job, or of any, sees this one from here on.
        self._check_uploads(job_id, args.n_bytes)
        self._uploading.add(job_id)
        self._uploading_bytes[job_id] = args.n_bytes
        try:
            await self._check_free_disk(job_id, args.n_bytes)
        except BaseException:
            self._uploading.discard(job_id)
            self._uploading_bytes.pop(job_id, None)
            raise
        folder = job_folder(self._directory, job_id)
        path = folder / f"upload-{secrets.token_hex(8)}.tmp"
        try:
            await self._in_thread(folder.mkdir, 0o700, True, True)
            upload = ImageUpload(
                path,
                args.n_bytes,
                conn.transport,
                trailer_bytes=0 if args.sha256 is not None else DIGEST_TRAILER_BYTES,
            )
            self.pool.prepare()  # workers warm up while the bytes come
            if upload.n_total_bytes:
                try:
                    conn.take_body(upload)
                except Exception:
                    upload.abort("raw bytes came before the go-ahead")
                    raise
            conn.transport.write(encode_reply(UploadReady(accepting_bytes=args.n_bytes)))
            began = time.perf_counter()
            digest = await self._received(upload, conn)
            received = time.perf_counter()
            announced = args.sha256 or upload.trailer.decode("ascii", "replace")
            if digest != announced:
                raise UploadError(
                    f"the {args.n_bytes} bytes received for job {job_id} have sha256 {digest},"
                    f" not {announced} as announced"
                )
            spec = self._topology(self._ready_record(job_id))
            upload_path = str(path.resolve())
            order = PreloadOrder(path=upload_path, sha256=digest, topology=spec)
            info = await self._validated(job_id, path, order)
            await upload.synced()
            validated = time.perf_counter()
            record = self._ready_record(job_id)  # it may have gone while the bytes came
            job = self._jobs.get(job_id)
            kept: str | None = None
            if args.is_keeping_state and job is not None and job.record.ended_at is None:
                _require_not_lost(job)  # the boards may have lost it while the bytes came
            if (
                args.is_keeping_state
                and job is not None
                and job.record.ended_at is None
                and job.record.state_step > 0
            ):
                kept = await self._hand_over(job, upload_path, digest, spec)
                record = self._ready_record(job_id)
            token = secrets.token_urlsafe(24)
            # What the disk says of the job until this load is answered (None: nothing).
            before = None if job is None else job.record
            if job is None or job.record.ended_at is not None:
                # Known to the other commands only once its record is written.
                job = _Job(JobFolderRecord(job_id=job_id, token_sha256=_digest(token)))
            else:
                self._check_token(job, args.token)
                token = args.token or ""
            previous = job.record.snapshot
            update: dict[str, Any] = {"image": info, "topology": spec, "ended_at": None}
            if kept is None:
                # The first run after a load starts from the image: no state to continue from.
                update |= {"is_state_saved": False, "state_step": 0, "state_lost": None}
            else:
                # The next run continues from the state handed over to this image.
                update |= {"snapshot": kept, "is_state_saved": True}
            loaded = job.record.model_copy(update=update)
            await self._store_image(job, before, loaded, path, kept, record.machine_name)
            if kept is not None and previous is not None:
                await self._in_thread(storage.remove_folder, folder / previous)
            log.info(
                "image of job %d accepted: %d bytes received in %.3f s, validated in %.3f s,"
                " stored in %.3f s",
                job_id,
                info.n_bytes,
                received - began,
                validated - received,
                time.perf_counter() - validated,
            )
        except BaseException:
            self._uploading.discard(job_id)  # before the file goes: a sync point for tests
            self._uploading_bytes.pop(job_id, None)
            self._file_thread.submit(path.unlink, True)
            raise
        finally:
            self._uploading.discard(job_id)
            self._uploading_bytes.pop(job_id, None)
        if self._observer is not None:
            self._observer.image_accepted(info.n_bytes)
        return ImageLoaded(
            job_id=job_id, token=token, state_step=job.record.state_step, **info.model_dump()
        )

    def _check_uploads(self, job_id: int, n_bytes: int) -> None:
        """Refuse an image before its go-ahead when the uploads in flight have no room for
        it (a client making many jobs cannot fill the disk with uploads held open)."""
        uploading = sum(self._uploading_bytes.values())
        limit = self._settings.max_uploading_bytes
        if uploading + n_bytes > limit:
            raise DispatchError(
                f"the server is receiving {uploading} bytes of images already, and {n_bytes}"
                f" more for job {job_id} would pass its limit of {limit}: try again shortly"
            )

    async def _check_free_disk(self, job_id: int, n_bytes: int) -> None:
        """Refuse an image that, with the others being received, would leave the disk less
        than `min_free_bytes` free (this one's bytes are taken already)."""
        try:
            free = (await self._in_thread(shutil.disk_usage, self._directory)).free
        except OSError:
            return  # the upload itself will say what is wrong with the disk
        free -= sum(self._uploading_bytes.values()) - n_bytes  # the others' still to come
        if free - n_bytes < self._settings.min_free_bytes:
            raise DispatchError(
                f"the server's disk has {free} bytes free: too little for an image of"
                f" {n_bytes} bytes for job {job_id} (it keeps {self._settings.min_free_bytes}"
                " free); try again later"
            )

    async def _store_image(
        self,
        job: _Job,
        before: JobFolderRecord | None,
        loaded: JobFolderRecord,
        path: Path,
        kept: str | None,
        machine_name: str | None,
    ) -> None:
        """Put the validated upload in place as the job's image and write its `loaded` record
        (`before`: what the disk said of the job; `kept`: the state handed over, if any).

        Memory follows the disk: the job takes the new record only as it is written, and a
        job loaded for the first time is known to the other commands only then. If the disk
        fails, the job holds what the disk may say now (its token and no image), or, loaded
        for the first time, nothing; the client is told to load again.
        """
        job_id = loaded.job_id
        folder = job_folder(self._directory, job_id)
        interim = None
        if before is not None:
            # The job as it was, with no image; a fresh load's old state is of the image
            # replaced, never to be continued, whatever happens from here.
            interim = before.model_copy(
                update={"image": None}
                | ({"is_state_saved": False, "state_step": 0} if kept is None else {})
            )
        previous = job.record.snapshot
        seen = job.record
        job.saving = None  # a state being saved is of the image this one replaces
        try:
            await self._in_thread(storage.install_image, self._directory, job_id, interim, path)
            discarded: Path | None = None
            if kept is None and previous is not None:
                # The state there was of the image replaced: it must never be continued. A
                # rename takes it out of the way at once; removing a big file takes a while,
                # so that is done after the reply (a restart removes what a crash left).
                discarded = await self._in_thread(_set_aside_state, folder / previous)
            try:
                # Reset, powered off or destroyed while the files moved: what that did (its
                # record, the files it removed, queued after these) stands, not this load.
                self._ready_record(job_id)
                if job.record is not seen:
                    raise DispatchError(
                        f"job {job_id}'s boards were reset while its image was being stored:"
                        " load it again"
                    )
                job.record = loaded
                await self._save(job)
            finally:
                if discarded is not None:  # saved or not, it is never continued
                    self._file_thread.submit(_remove_file, discarded)
        except DispatchError:
            if interim is None:  # a first load: no record on disk names the job
                self._submit_file_work(Path.unlink, folder / IMAGE_FILE, True)
            raise
        except OSError as error:
            log.error("job %d: its image could not be stored: %s", job_id, error)
            if interim is None:  # no record on disk names the job: nor does memory
                self._submit_file_work(Path.unlink, folder / IMAGE_FILE, True)
            elif (known := self._jobs.get(job_id)) is not None:
                known.record = interim
            raise ImageNotStoredError(job_id, error) from None
        job.machine = machine_name
        self._jobs[job_id] = job

    def _require_state(self, job: _Job, what_to_do: str) -> None:
        """A run since the last fresh one left a state that is (or is being) saved."""
        record = job.record
        is_kept = record.snapshot is not None and (record.is_state_saved or job.saving is not None)
        if record.state_step > 0 and not is_kept:
            raise NoImageError(
                job.job_id,
                "lost the state its last run left (the worker ended while saving it);"
                f" {what_to_do}",
            )

    async def _hand_over(self, job: _Job, upload: str, sha256: str, spec: TopologySpec) -> str:
        """Have a worker carry the job's state over to an uploaded image; its new snapshot.

        The worker continues the last snapshot for no steps on the new image (see
        `allocator.dispatch.worker`) and saves the state and the results so far as a
        snapshot of their own, which the record names only once the image is accepted.

        Raises:
            StateNotKeptError: the state cannot go over (another layout, named; the state
                lost, the worker gone); nothing of the job changed.
        """
        self._require_state(job, "load the image without keep_state")
        previous, last = job.record.snapshot, job.last_run
        assert previous is not None
        assert last is not None
        folder = job_folder(self._directory, job.job_id)
        # Named after the run, not the snapshot it continues: loads in a row keep it short.
        snapshot = f"snap-{last.run_id}-kept-{secrets.token_hex(4)}"
        order = RunOrder(
            run_id=last.run_id,
            job_id=job.job_id,
            folder=str(folder.resolve()),
            topology=spec,
            n_steps=0,
            is_fresh=False,
            previous_snapshot=previous,
            snapshot=snapshot,
            image_sha256=sha256,  # the preload of the upload, if a worker made one
            new_image=upload,
        )
        hand_over = _HandOver(self.queue_moved)
        ticket = RunTicket(order, hand_over)
        job.handing_over = ticket
        try:
            self.pool.submit(ticket)
            reason = await asyncio.shield(hand_over.outcome)
            self._ready_record(job.job_id)  # destroyed, powered off or reset meanwhile
            if reason is None and (job.record.snapshot != previous or job.record.image is None):
                reason = "the state went while the image was loading"
            if reason is not None:
                raise StateNotKeptError(job.job_id, reason)
        except BaseException:
            if not hand_over.outcome.done():
                self.pool.stop(ticket, RunState.STOPPED, "the load of its image was given up")
            # Removed once the worker has left it: killed, or done saving into it.
            hand_over.outcome.add_done_callback(
                lambda _: self._submit_file_work(storage.remove_folder, folder / snapshot)
            )
            raise
        finally:
            job.handing_over = None
        return snapshot

    async def _received(self, upload: ImageUpload, conn: Any) -> str:
        """Wait for the whole body; a stalled upload is aborted and its connection closed."""
        idle_s = self._settings.upload_idle_s
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(upload.finished), idle_s)
            except TimeoutError:
                if upload.idle_s >= idle_s:
                    upload.abort(
                        f"no bytes came for {idle_s:g} s after {upload.n_received} of"
                        f" {upload.n_total_bytes}"
                    )
                    conn.close_after_reply()  # the rest of the body would read as requests
                    return await upload.finished

    async def _validated(self, job_id: int, path: Path, order: PreloadOrder) -> ImageInfo:
        """Validate an upload: in an idle worker if there is one, else on a thread here.

        The worker decodes and validates in a process of its own, so that the event loop's
        process does no CPU-heavy work for an upload (a thread here would hold the GIL for
        most of it), and then builds the executor from the same decoded image, so that a
        fresh run of it starts without that work.

        Raises:
            ImageRejectedError: the image is malformed or does not fit (naming what).
        """
        verdict = self.pool.preload(order)
        if verdict is not None:
            message = await verdict
            if message.kind == "valid" and message.image is not None:
                return message.image
            if message.kind == "invalid":
                raise ImageRejectedError(job_id, message.reason or "invalid")
            log.warning(
                "a worker could not validate the image of job %d (%s); validating it here",
                job_id,
                message.reason,
            )
        # No worker free: a thread, so that the upload does not wait for a run to end.
        return await asyncio.to_thread(_validated, job_id, path, order.sha256, order.topology)

    def _topology(self, record: JobRecord) -> TopologySpec:
        assert record.machine_name is not None
        machine = self._jobs_of_service.machine(record.machine_name)
        if machine is None:
            raise JobNotReadyError(record.job_id, f"is on machine {record.machine_name!r}, gone")
        return job_topology(
            machine,
            record,
            dead_chips=self._dead_chips.get(machine.name, ()),
            out_of_service_links=self._jobs_of_service.out_of_service_links(machine.name),
        )

    # --- runs -----------------------------------------------------------------------------

    async def start_run(self, args: StartRunArgs, conn: Any) -> RunStatus:
        """Queue a run of the job's image: on from the last run's state, or afresh."""
        await self._restored.wait()
        job = self._job_with_token(args.job_id, args.token)
        await self._durable(job)
        self._ready_record(job.job_id)
        if job.job_id in self._uploading:
            raise DispatchError(
                f"job {job.job_id} is receiving an image; start the run once load_image has"
                " answered"
            )
        if job.record.image is None or job.record.topology is None:
            raise NoImageError(job.job_id)
        last = job.last_run
        if job.ticket is not None and last is not None:
            raise RunBusyError(job.job_id, last.run_id, job.status_word())
        is_continued = (
            not args.is_fresh
            and job.record.snapshot is not None
            and (job.record.is_state_saved or job.saving is not None)
        )
        if not args.is_fresh and not is_continued and job.record.state_step > 0:
            raise NoImageError(
                job.job_id,
                "lost the state its last run left (the worker ended while saving it);"
                " start afresh with fresh=true",
            )
        run_id = 1 if last is None else last.run_id + 1
        first_step = job.record.state_step if is_continued else 0
        order = RunOrder(
            run_id=run_id,
            job_id=job.job_id,
            folder=str(job_folder(self._directory, job.job_id).resolve()),
            topology=job.record.topology,
            n_steps=args.n_steps,
            is_fresh=not is_continued,
            previous_snapshot=job.record.snapshot if is_continued else None,
            snapshot=f"snap-{run_id}",
            image_sha256=job.record.image.sha256,
        )
        ticket = RunTicket(order, self)
        before = job.record
        job.ticket = ticket
        runs = (
            *job.record.runs[-99:],
            RunRecord(
                run_id=run_id,
                n_steps=args.n_steps,
                is_fresh=not is_continued,
                first_step=first_step,
                state=RunState.QUEUED,
            ),
        )
        job.record = job.record.model_copy(update={"runs": runs})
        try:
            await self._save(job)
        except OSError as error:
            # The record on disk is the one before (written whole or not at all): so is
            # memory, and nothing was queued.
            log.error("job %d: run %d could not be recorded: %s", job.job_id, run_id, error)
            job.ticket = None
            job.record = before
            raise RunNotStoredError(job.job_id, run_id, error) from None
        if args.is_watched:
            job.watchers.add(conn)
            conn.is_watching_runs = True
        self.pool.submit(ticket)
        job.status = self._live_status(job)
        # After the reply: a notification a request causes follows that request's reply.
        asyncio.get_running_loop().call_soon(
            functools.partial(self._announce, job, is_state_change=True)
        )
        return job.status

    async def run_status(self, args: RunStatusArgs, conn: Any) -> RunStatus:
        """The job's latest run."""
        await self._restored.wait()
        job = self._job_with_token(args.job_id, args.token)
        await self._durable(job)
        return self._live_status(job)

    async def stop_run(self, args: StopRunArgs, conn: Any) -> RunStatus:
        """Stop the job's run now (out of the queue, or its worker killed)."""
        await self._restored.wait()
        job = self._job_with_token(args.job_id, args.token)
        ticket = job.ticket
        if ticket is not None:
            reason = args.reason or f"run {ticket.run_id} was stopped by its job runner"
            self.pool.stop(ticket, RunState.STOPPED, reason)
            await ticket.over.wait()
            await self._save(job)
        return self._live_status(job)

    # --- results --------------------------------------------------------------------------

    async def fetch_results(self, args: FetchResultsArgs, conn: Any) -> ReplyWithBody:
        """A byte range of the job's results file, or of one part of it."""
        await self._restored.wait()
        job = self._job_with_token(args.job_id, args.token)
        await self._durable(job)
        snapshot = job.record.snapshot
        if snapshot is None:
            raise NoResultsError(f"job {job.job_id} has no results yet: no run has finished")
        path = job_folder(self._directory, job.job_id) / snapshot / RESULTS_FILE
        limit = min(args.max_bytes, MAX_FETCH_BYTES)
        try:
            start, size = await self._in_thread(_part_range, path, args.part)
        except FileNotFoundError:
            raise NoResultsError(f"the results of job {job.job_id} are gone") from None
        if start is None:
            raise NoResultsError(f"job {job.job_id}'s results have no part {args.part!r}")
        offset = min(args.offset, size)
        n_bytes = min(limit, size - offset)
        try:
            data, digest = await self._in_thread(_read_range, path, start + offset, n_bytes)
        except FileNotFoundError:  # replaced by a later run or load meanwhile: ask again
            raise NoResultsError(
                f"the results of job {job.job_id} changed while they were read; fetch again"
            ) from None
        header = ResultsChunk(
            part=args.part,
            snapshot=snapshot,
            offset=offset,
            n_bytes=len(data),
            total_bytes=size,
            sha256=digest,
        )
        return ReplyWithBody(header, data)

    # --- the pool's events (RunEvents) ------------------------------------------------------

    def _job_of(self, ticket: RunTicket) -> _Job | None:
        job = self._jobs.get(ticket.job_id)
        return job if job is not None and job.ticket is ticket else None

    def run_started(self, ticket: RunTicket, first_step: int) -> None:
        job = self._job_of(ticket)
        if job is None:
            return
        job.progress_at = time.monotonic()
        job.progress_steps = 0
        job.status = self._live_status(job, state=RunState.RUNNING)
        self._announce(job, is_state_change=True)

    def run_progress(self, ticket: RunTicket, steps_done: int) -> None:
        job = self._job_of(ticket)
        if job is None:
            return
        now = time.monotonic()
        if now > job.progress_at:
            job.steps_per_s = (steps_done - job.progress_steps) / (now - job.progress_at)
        job.progress_at, job.progress_steps = now, steps_done
        job.status = self._live_status(job, state=RunState.RUNNING, steps_done=steps_done)
        self._announce(job, is_state_change=False)

    def run_done(self, ticket: RunTicket, steps_done: int) -> None:
        job = self._job_of(ticket)
        if job is None:
            return
        job.ticket = None
        ticket.over.set()
        job.saving = ticket
        before = job.record
        previous = job.record.snapshot
        job.record = job.record.model_copy(
            update={
                "snapshot": ticket.order.snapshot,
                "state_step": self._first_step(job) + steps_done,
                "is_state_saved": False,
            }
        )
        self._set_last_run(job, state=RunState.DONE, steps_done=steps_done)
        self._ended(job, RunState.DONE, previous, before)

    def run_ended(self, ticket: RunTicket, state: RunState, reason: str) -> None:
        job = self._job_of(ticket)
        if job is None:
            return
        job.ticket = None
        ticket.over.set()
        before = job.record
        steps = job.status.steps_done if job.status is not None else 0
        self._set_last_run(job, state=state, reason=reason, steps_done=steps)
        self._ended(job, state, None, before)
        folder = job_folder(self._directory, job.job_id)
        self._file_thread.submit(storage.remove_folder, folder / ticket.order.snapshot)

    def state_saved(self, ticket: RunTicket, is_saved: bool) -> None:
        job = self._jobs.get(ticket.job_id)
        if job is None:
            return
        is_current = job.saving is ticket
        if is_current:
            job.saving = None
        if is_current and job.record.snapshot == ticket.order.snapshot:
            job.record = job.record.model_copy(update={"is_state_saved": is_saved})
            self._background(self._save(job))
        else:
            folder = job_folder(self._directory, job.job_id) / ticket.order.snapshot
            self._file_thread.submit(_remove_state, folder)

    def queue_moved(self) -> None:
        for job in self._jobs.values():
            if job.ticket is not None and self.pool.queue_position(job.ticket) is not None:
                job.status = self._live_status(job)
                self._notify(job)
        self._count()

    def _ended(
        self,
        job: _Job,
        state: RunState,
        previous_snapshot: str | None,
        before: JobFolderRecord,
    ) -> None:
        """A run ended (`before`: the job's record before): saved, then announced.

        If its record cannot be written, no reply may claim what the disk does not hold:
        the job is as before the run, the run failed, and the watchers are told so.
        """
        job.status = self._status_of_record(job)
        if self._observer is not None:
            self._observer.run_ended(state)
        folder = job_folder(self._directory, job.job_id)
        snapshot = job.record.snapshot
        ended = job.record

        saved = self._save(job) if self._task_group is not None else None

        async def save_then_announce() -> None:
            if saved is not None:
                try:
                    await saved
                except OSError as error:
                    self._end_not_recorded(job, ended, before, error)
                    self._announce(job, is_state_change=True)
                    return
            if previous_snapshot is not None and previous_snapshot != snapshot:
                await self._in_thread(storage.remove_folder, folder / previous_snapshot)
            self._announce(job, is_state_change=True)

        if self._task_group is None:
            self._announce(job, is_state_change=True)
        else:
            self._background(save_then_announce())

    def _end_not_recorded(
        self, job: _Job, ended: JobFolderRecord, before: JobFolderRecord, error: OSError
    ) -> None:
        last = ended.runs[-1] if ended.runs else None
        run_id = 0 if last is None else last.run_id
        why = error.strerror or str(error)
        log.error("job %d: the end of run %d could not be recorded: %s", job.job_id, run_id, why)
        if job.record is ended:  # nothing else changed it since: back to before the run
            job.record = before
            job.saving = None
            if ended.snapshot != before.snapshot and ended.snapshot is not None:
                folder = job_folder(self._directory, job.job_id)
                self._submit_file_work(storage.remove_folder, folder / ended.snapshot)
        self._set_last_run(
            job,
            state=RunState.FAILED,
            reason=f"the end of run {run_id} could not be recorded ({why.lower()}); start it again",
            steps_done=0,
        )
        job.status = self._status_of_record(job)
        self._background(self._save(job))  # as the disk allows

    def _first_step(self, job: _Job) -> int:
        last = job.last_run
        return 0 if last is None else last.first_step

    # --- status, notifications, events ------------------------------------------------------

    def _set_last_run(self, job: _Job, **changes: Any) -> None:
        last = job.last_run
        if last is None:
            return
        job.record = job.record.model_copy(
            update={"runs": (*job.record.runs[:-1], last.model_copy(update=changes))}
        )

    def _status_of_record(self, job: _Job) -> RunStatus:
        last = job.last_run
        if last is None:
            return RunStatus(job_id=job.job_id, run_id=0, state=None)
        return RunStatus(
            job_id=job.job_id,
            run_id=last.run_id,
            state=last.state,
            steps_done=last.steps_done if last.state.is_over else 0,
            steps_total=last.n_steps,
            first_step=last.first_step,
            reason=last.reason,
        )

    def _live_status(
        self, job: _Job, *, state: RunState | None = None, steps_done: int | None = None
    ) -> RunStatus:
        """The latest run as it is now: from the pool while it goes, else from the record."""
        ticket = job.ticket
        last = job.last_run
        if ticket is None or last is None:
            return self._status_of_record(job)
        base = job.status if job.status is not None and job.status.run_id == last.run_id else None
        position = self.pool.queue_position(ticket)
        if state is None:
            state = RunState.QUEUED if position is not None else RunState.RUNNING
        if steps_done is None:
            steps_done = base.steps_done if base is not None else 0
        return RunStatus(
            job_id=job.job_id,
            run_id=last.run_id,
            state=state,
            steps_done=steps_done,
            steps_total=last.n_steps,
            first_step=last.first_step,
            queue_position=position,
        )

    def _notify(self, job: _Job) -> None:
        if job.status is None:
            return
        line = encode_notification(RunProgress(run_progress=job.status))
        for watcher in list(job.watchers):
            watcher.send(line)  # (drops a watcher that reads nothing)

    def _announce(self, job: _Job, *, is_state_change: bool) -> None:
        """Tell the run's watchers, the MQTT subscribers and the metrics."""
        self._notify(job)
        self._count()
        status = job.status
        if self._publisher is None or status is None or status.state is None:
            return
        now = time.monotonic()
        if not is_state_change and now - job.event_at < _PROGRESS_EVENT_S:
            return
        job.event_at = now
        self._publisher.publish_run(
            RunEvent(
                timestamp_s=self._wall_clock(),
                job_id=job.job_id,
                machine=job.machine,
                run_id=max(1, status.run_id),
                state=status.state.value,
                steps_done=status.steps_done,
                steps_total=status.steps_total,
                reason=status.reason,
            )
        )

    def _count(self) -> None:
        if self._observer is None:
            return
        self._observer.set_runs(self.pool.n_queued, self.pool.n_running)
        self._observer.set_steps_per_s(
            sum(job.steps_per_s for job in self._jobs.values() if job.ticket is not None)
        )

    # --- access and state -------------------------------------------------------------------

    def _ready_record(self, job_id: int | None) -> JobRecord:
        record = None if job_id is None else self._jobs_of_service.job_record(job_id)
        if record is None:
            raise JobNotReadyError(job_id, "does not exist")
        if not record.is_live:
            reason = f": {record.reason}" if record.reason else ""
            raise JobNotReadyError(job_id, f"was destroyed{reason}")
        if record.state is JobState.QUEUED:
            raise JobNotReadyError(job_id, "is still queued for boards")
        if record.state is JobState.POWER:
            raise JobNotReadyError(job_id, "is powering its boards; wait for state 3 (ready)")
        if not record.power:
            raise JobNotReadyError(job_id, "has its boards powered off; power them on first")
        return record

    def _job_with_token(self, job_id: int | None, token: str | None) -> _Job:
        job = None if job_id is None else self._jobs.get(job_id)
        if job is None:
            raise NoImageError(_job_id(job_id), "has no image loaded")
        self._check_token(job, token)
        return job

    def _check_token(self, job: _Job, token: str | None) -> None:
        if token is None or not hmac.compare_digest(_digest(token), job.record.token_sha256):
            raise TokenError(
                f"job {job.job_id}'s image, runs and results need the token that its"
                " load_image answered"
            )

    def _save(self, job: _Job) -> asyncio.Future[None]:
        """Start writing the job's record now, so that a reply from here on waits for it
        (`_durable`), even if what awaits the returned future runs later, as a task."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(
                self._file_thread, storage.write_record, self._directory, job.record
            )
        except RuntimeError:  # the file thread has stopped: the server is stopping
            stopped: asyncio.Future[None] = loop.create_future()
            stopped.set_result(None)  # the restart marks what was in flight
            return stopped
        job.last_save = future
        return future

    async def _durable(self, job: _Job) -> None:
        """Wait until the job's latest change is on disk (a reply must not claim more)."""
        if job.last_save is not None and not job.last_save.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(job.last_save)

    def _submit_file_work(self, function: Callable[..., object], *args: Any) -> None:
        """Queue work on the file thread without waiting (none once it has shut down)."""
        with contextlib.suppress(RuntimeError):
            self._file_thread.submit(function, *args)

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        # The file thread: ordered, and off the event loop.
        return await asyncio.get_running_loop().run_in_executor(self._file_thread, function, *args)


class _HandOver:
    """The pool's events of a state hand-over (`DispatchCommands._hand_over`): its outcome,
    None once the state is saved, else why it failed."""

    def __init__(self, queue_moved: Callable[[], None]) -> None:
        self.outcome: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.queue_moved = queue_moved  # the other runs' positions move on as usual

    def _end(self, reason: str | None) -> None:
        if not self.outcome.done():
            self.outcome.set_result(reason)

    def run_started(self, ticket: RunTicket, first_step: int) -> None:
        pass

    def run_progress(self, ticket: RunTicket, steps_done: int) -> None:
        pass

    def run_done(self, ticket: RunTicket, steps_done: int) -> None:
        pass  # the outcome waits for the state to be on disk

    def run_ended(self, ticket: RunTicket, state: RunState, reason: str) -> None:
        self._end(reason)

    def state_saved(self, ticket: RunTicket, is_saved: bool) -> None:
        self._end(None if is_saved else "the worker ended while saving the state")


def _is_ready(record: JobRecord) -> bool:
    return record.state is JobState.READY and bool(record.power)


def _job_id(job_id: int | None) -> int:
    if job_id is None:
        raise JobNotReadyError(job_id, "does not exist")
    return job_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _logged(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("a dispatch background task failed")


# --- on threads ----------------------------------------------------------------------------


def _validated(job_id: int, path: Path, sha256: str, spec: TopologySpec) -> ImageInfo:
    """Decode and validate an uploaded image file (on a thread: this is the heavy part)."""
    try:
        _image, info = validated(path, sha256, spec)
    except MachineModelError as error:
        raise ImageRejectedError(job_id, str(error)) from None
    return info


def _part_range(path: Path, part: str) -> tuple[int | None, int]:
    """Where a part lies in a results file: (start, size); start None for no such part."""
    with path.open("rb") as f:
        if part == PART_ALL:
            f.seek(0, 2)
            return 0, f.tell()
        head = f.read(_HEAD_BYTES)
        needed = index_bytes_needed(head)
        if needed > len(head):
            f.seek(0)
            head = f.read(needed)
        if part == PART_INDEX:
            return 0, needed
        f.seek(0, 2)
        entry = read_index(head, n_bytes=f.tell()).parts.get(part)
        return (None, 0) if entry is None else (entry.offset, entry.n_bytes)


def _read_range(path: Path, start: int, n_bytes: int) -> tuple[bytes, str]:
    """Bytes of a file and their sha256 (on the file thread: hashing is no work for the loop)."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(n_bytes)
    return data, hashlib.sha256(data).hexdigest()


def _remove_files(folder: Path, snapshot: str | None) -> None:
    (folder / IMAGE_FILE).unlink(missing_ok=True)
    if snapshot is not None:
        _remove_state(folder / snapshot)


def _require_not_lost(job: _Job) -> None:
    """Refuse a keep-state load of a job whose boards lost the state its last run left."""
    if job.record.state_lost is not None:
        raise StateNotKeptError(
            job.job_id, f"{job.record.state_lost} since its last run, and the state went with them"
        )


def _remove_state(snapshot: Path) -> None:
    with contextlib.suppress(OSError):
        (snapshot / STATE_FILE).unlink(missing_ok=True)


def _set_aside_state(snapshot: Path) -> Path | None:
    """Rename a snapshot's state to a leftover temporary name in the job's folder, or None.

    The job folder's ``*.tmp`` files are removed when the server starts, so a state set
    aside is never continued even if the server stops before `_remove_file` takes it.
    """
    aside = snapshot.parent / f"discarded-{secrets.token_hex(8)}.tmp"
    try:
        (snapshot / STATE_FILE).rename(aside)
    except FileNotFoundError:
        return None
    except OSError:
        _remove_state(snapshot)  # could not rename: remove it in place, as before
        return None
    return aside


def _remove_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
