"""Boards on an allotment server, driven synchronously: allocate, load, run, fetch, free.

A `RemoteMachine` is the job runner's handle on one job. It runs an event loop of its own in
a background thread, which carries two connections to the server: one for the calls and one
that sends the job's keepalive every ``keepalive_s / 2`` (so a long upload never lets the job
expire)::

    caller thread                       loop thread ("allotment-remote")
    machine.load(image) --submit-----> client.load_image(...) ---> server
         ^   (waits, with a limit)       keepalive task: job_keepalive every keepalive_s/2
         +--------------result/error---+

Usage::

    with RemoteMachine.allocate("spinnaker.example.org", 22244, owner="me", n_boards=3) as m:
        mapped = map_network(net, m.topology)
        m.load(mapped.image)
        m.run(10_000, progress=lambda done, total: print(done, total))
        results = m.results()          # the same `Results` an in-process Executor returns

Every failure is a `RemoteError` (a `ToolchainError`) naming the server; a run that fails or
is stopped (the job destroyed, its boards powered off, a limit passed) is a `RemoteRunError`
with the server's reason. Nothing waits without a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from machine_models.errors import ResultsFormatError
from machine_models.executor import Results
from machine_models.geometry import BOARD_CHIPS
from machine_models.image import Image
from machine_models.results_file import decode_results
from machine_models.topology import Topology
from protocol.client import AllotmentClient
from protocol.dispatch import RunState, RunStatus
from protocol.errors import ProtocolError, ProtocolTimeoutError, ServerError
from toolchain.allocation import allocation_from_machine_info
from toolchain.build import MappedNetwork, map_network
from toolchain.errors import RemoteError, RemoteRunError
from toolchain.network import Network
from toolchain.splitting import MappingConfig

__all__ = ["RemoteMachine", "run_on_server"]

_T = TypeVar("_T")
_READY: Final = 3
_DESTROYED: Final = 4
_CALL_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 5.0
"""While a run goes, the server is asked for its status at least this often."""
_UPLOAD_BYTES_PER_S: Final = 5e6
"""The slowest upload the time limit of `load` allows for."""
_HAND_OVER_S: Final = 600.0
"""What a keep-state load may take beyond the upload: a free worker, the state handed over."""


class RemoteMachine:
    """One job's boards on an allotment server (a context manager; `close` frees them).

    Build it with `allocate`. Attributes `job_id` and `topology` (the allocation as
    ``get_job_machine_info`` reports it) are set once the boards are ready.
    """

    job_id: int
    topology: Topology

    def __init__(self, host: str, port: int, *, owner: str, keepalive_s: float) -> None:
        self._host = host
        self._port = port
        self._owner = owner
        self._keepalive_s = keepalive_s
        self._token: str | None = None
        self._image: Image | None = None
        self._client: AllotmentClient | None = None
        self._keepalive_client: AllotmentClient | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._keepalive_error: str | None = None
        self._is_closed = False
        self._has_run = False
        """Whether a run has ended done since the last plain load (so a state is kept)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="allotment-remote", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        job = getattr(self, "job_id", None)
        state = "closed" if self._is_closed else "open"
        return f"<RemoteMachine {self._where} job={job} {state}>"

    @property
    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    # --- construction and teardown ------------------------------------------------------

    @classmethod
    def allocate(
        cls,
        host: str,
        port: int,
        *,
        owner: str,
        n_boards: int | None = None,
        n_chips: int | None = None,
        keepalive_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> RemoteMachine:
        """Ask the server for boards and wait until they are ready.

        Args:
            host: the server's name or address.
            port: its spalloc port.
            owner: who the job is for.
            n_boards: boards wanted (default 1); or give `n_chips`.
            n_chips: chips wanted: enough boards of 48 chips.
            keepalive_s: the job's keepalive; the machine sends keepalives in between.
            timeout_s: most seconds to wait for the boards (None: as long as it takes).

        Raises:
            RemoteError: the server cannot be reached, refused the job, or destroyed it.
        """
        if n_boards is not None and n_chips is not None:
            raise RemoteError("give n_boards or n_chips, not both")
        if n_chips is not None:
            n_boards = max(1, math.ceil(n_chips / len(BOARD_CHIPS)))
        machine = cls(host, port, owner=owner, keepalive_s=keepalive_s)
        try:
            machine._call(machine._allocate(n_boards or 1, timeout_s), None)
        except BaseException:
            machine.close()
            raise
        return machine

    async def _allocate(self, n_boards: int, timeout_s: float | None) -> None:
        self._client = await AllotmentClient.connect(
            self._host, self._port, timeout_s=_CALL_TIMEOUT_S
        )
        dims = () if n_boards == 1 else (n_boards,)
        self.job_id = await self._client.create_job(
            *dims, owner=self._owner, keepalive_s=self._keepalive_s
        )
        await self._attach(timeout_s)

    @classmethod
    def adopt(
        cls,
        host: str,
        port: int,
        *,
        job_id: int,
        owner: str,
        keepalive_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> RemoteMachine:
        """Take over a job someone else created (a batch runner's powered standby).

        Waits until the job is ready, as `allocate` does, then keeps it alive; `close`
        destroys it.

        Args:
            host: the server's name or address.
            port: its spalloc port.
            job_id: the job to take over.
            owner: the owner it was created with (its first image load names it).
            keepalive_s: how often it must be kept alive (its creator's keepalive or less).
            timeout_s: most seconds to wait for its boards (None: as long as it takes).

        Raises:
            RemoteError: the server cannot be reached, or the job is gone or never ready.
        """
        machine = cls(host, port, owner=owner, keepalive_s=keepalive_s)
        try:
            machine._call(machine._adopt(job_id, timeout_s), None)
        except BaseException:
            machine._forget_job()
            machine.close()
            raise
        return machine

    async def _adopt(self, job_id: int, timeout_s: float | None) -> None:
        self._client = await AllotmentClient.connect(
            self._host, self._port, timeout_s=_CALL_TIMEOUT_S
        )
        self.job_id = job_id
        await self._attach(timeout_s)

    def _forget_job(self) -> None:
        """Leave the job as it is on close (a job not taken over is not ours to destroy)."""
        self.__dict__.pop("job_id", None)

    async def _attach(self, timeout_s: float | None) -> None:
        """Wait until the job is ready, read its boards and start keeping it alive."""
        assert self._client is not None
        await self._client.notify_job(self.job_id)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    state = await self._client.get_job_state(self.job_id)
                    if state.state == _READY:
                        break
                    if state.state == _DESTROYED or state.state == 0:
                        raise RemoteError(
                            f"server {self._where} destroyed job {self.job_id}: {state.reason}"
                        )
                    with contextlib.suppress(ProtocolTimeoutError):
                        await self._client.receive_notification(timeout_s=_POLL_S)
        except TimeoutError:
            raise RemoteError(
                f"job {self.job_id} on {self._where} was not ready within {timeout_s:g} s"
            ) from None
        info = await self._client.get_job_machine_info(self.job_id)
        self.topology = allocation_from_machine_info(info.model_dump(mode="json"))
        self._keepalive_client = await AllotmentClient.connect(
            self._host, self._port, timeout_s=_CALL_TIMEOUT_S
        )
        self._keepalive_task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        assert self._keepalive_client is not None
        interval = max(0.05, self._keepalive_s / 2)
        try:
            while True:
                await self._keepalive_client.job_keepalive(self.job_id)
                await asyncio.sleep(interval)
        except ProtocolError as error:
            self._keepalive_error = f"keepalive of job {self.job_id} failed: {error}"

    def close(self) -> None:
        """Destroy the job (freeing its boards) and close the connections; idempotent."""
        if self._is_closed:
            return
        self._is_closed = True
        try:
            if self._loop.is_running():
                with contextlib.suppress(Exception):
                    self._submit(self._teardown()).result(_CALL_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    async def _teardown(self) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
        if self._client is not None:
            if hasattr(self, "job_id"):
                with contextlib.suppress(ProtocolError):
                    await self._client.destroy_job(self.job_id, "RemoteMachine closed")
            await self._client.aclose()
        if self._keepalive_client is not None:
            await self._keepalive_client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the job runner's calls ---------------------------------------------------------

    def load(self, image: Image, *, keep_state: bool = False) -> None:
        """Upload an image onto the boards; the server validates it against the allocation.

        Args:
            image: the image, mapped on `topology`.
            keep_state: the next run goes on from where the last one left the chips (time,
                potentials, queues, random generators) with this image's parameters, and
                `results` goes on from the last fresh run; the image must lay the network
                out as the running one does. The server hands the state over on one of its
                workers before it answers, so the load may wait for one to be free.

        Raises:
            RemoteError: the server refused it (the message names the chip or core, or what
                keeps the state from going over; the previous image and state stay) or the
                upload failed.
        """
        data = image.encode()
        limit = _CALL_TIMEOUT_S + len(data) / _UPLOAD_BYTES_PER_S
        if keep_state:
            limit += _HAND_OVER_S
        state_step = self._call(self._load(data, limit, keep_state), limit + _CALL_TIMEOUT_S)
        self._image = image
        if keep_state and self._has_run and state_step == 0:
            # The server keeps a state whenever a run left one: none means it went.
            raise RemoteError(
                f"job {self.job_id} kept no running state (the image loaded, but the next"
                " run starts from it): load it without keep_state, or run afresh"
            )
        if not keep_state:
            self._has_run = False

    async def _load(self, data: bytes, limit: float, keep_state: bool) -> int:
        client = self._require_client()
        loaded = await client.load_image(
            self.job_id,
            data,
            owner=self._owner,
            token=self._token,
            keep_state=keep_state,
            timeout_s=limit,
        )
        self._token = loaded.token
        return loaded.state_step

    def run(
        self,
        n_steps: int,
        *,
        fresh: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Run the loaded image `n_steps` timesteps, on from the last run (or afresh).

        Args:
            n_steps: timesteps to run.
            fresh: start from the loaded image instead of where the last run ended.
            progress: called as ``progress(steps_done, steps_total)`` while it runs (from
                the machine's background thread).

        Raises:
            RemoteRunError: the run failed or was stopped; the message is the server's reason.
            RemoteError: no image loaded, or the server is gone.
        """
        self._call(self._run(n_steps, fresh, progress), None)

    async def _run(
        self, n_steps: int, fresh: bool, progress: Callable[[int, int], None] | None
    ) -> None:
        client = self._require_client()
        token = self._require_token()

        def report(status: RunStatus) -> None:
            if progress is not None and status.state is RunState.RUNNING:
                progress(status.steps_done, status.steps_total)

        status = await client.start_run(self.job_id, token, n_steps, fresh=fresh)
        while status.state is not None and not status.state.is_over:
            self._check_keepalive()
            try:
                status = await client.wait_for_run(
                    self.job_id, token, progress=report, timeout_s=_POLL_S
                )
            except ProtocolTimeoutError:
                status = await client.run_status(self.job_id, token)
        if status.state is not RunState.DONE:
            raise RemoteRunError(
                f"run {status.run_id} of job {self.job_id} on {self._where} {status.state}:"
                f" {status.reason}"
            )
        self._has_run = True
        if progress is not None:
            progress(status.steps_done, status.steps_total)

    def results(self) -> Results:
        """Everything recorded since the last fresh run, as `Executor.run` returns it.

        Raises:
            RemoteError: no results yet, or the server is gone.
        """
        data = self._call(self._fetch(), None)
        try:
            results, _ = decode_results(data)
        except ResultsFormatError as error:
            raise RemoteError(f"results of job {self.job_id} from {self._where}: {error}") from None
        return results

    async def _fetch(self) -> bytes:
        return await self._require_client().fetch_results(self.job_id, self._require_token())

    # --- plumbing -----------------------------------------------------------------------

    def _require_client(self) -> AllotmentClient:
        if self._client is None or self._is_closed:
            raise RemoteError(f"the machine on {self._where} is closed")
        return self._client

    def _require_token(self) -> str:
        if self._token is None:
            raise RemoteError(f"job {self.job_id} on {self._where} has no image loaded")
        return self._token

    def _check_keepalive(self) -> None:
        if self._keepalive_error is not None:
            raise RemoteError(f"server {self._where}: {self._keepalive_error}")

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout_s: float | None) -> _T:
        """Run a coroutine on the machine's loop and wait for it; map failures to ours."""
        if self._is_closed and self._client is not None:
            coro.close()
            raise RemoteError(f"the machine on {self._where} is closed")
        future = self._submit(coro)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise RemoteError(f"server {self._where} did not answer in {timeout_s:g} s") from None
        except ServerError as error:
            raise RemoteError(f"server {self._where} refused: {error}") from None
        except ProtocolError as error:
            raise RemoteError(f"server {self._where}: {error}") from None


def run_on_server(
    network: Network,
    n_steps: int,
    *,
    host: str,
    port: int,
    owner: str,
    n_boards: int | None = None,
    config: MappingConfig | None = None,
    keepalive_s: float = 60.0,
    timeout_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[MappedNetwork, Results]:
    """The whole path: allocate boards, map the network onto them, load, run, fetch, free.

    Returns:
        The mapping (to find each population's cores) and the results.

    Raises:
        RemoteError: anything on the server's side (`RemoteRunError` for a failed run).
        ToolchainError: the network does not map onto the boards.
    """
    with RemoteMachine.allocate(
        host, port, owner=owner, n_boards=n_boards, keepalive_s=keepalive_s, timeout_s=timeout_s
    ) as machine:
        mapped = map_network(network, machine.topology, config)
        machine.load(mapped.image)
        machine.run(n_steps, progress=progress)
        return mapped, machine.results()
