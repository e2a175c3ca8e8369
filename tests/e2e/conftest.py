"""Fixtures for the end-to-end tests: a real allotment server process and the real clients.

The server runs as `python -m allocator.cli serve` on port 0; the fixture reads the real port
from the one stderr line that says `listening on HOST:PORT`. The spalloc client 1!7.4.1 is
installed in the environment; 1!7.0.0 is installed on demand into the pytest cache and run in
subprocesses with `PYTHONPATH` pointing at it (both import as `spalloc_client`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SPALLOC_700_DIR = REPO_ROOT / ".pytest_cache" / "spalloc-7.0.0"
BOARD_LOCATIONS_CSV = REPO_ROOT / "allocator" / "data" / "spinn1m-ethernet-chips.csv"
CLIENT_VERSIONS = ("7.4.1", "7.0.0")
MACHINE_NAME = "spinn-1200"

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 10.0

_LISTENING = re.compile(r"listening on \[?([0-9A-Za-z.:\-]+?)\]?:(\d+)\b")

SERVER_TOML = """\
[server]
seconds_before_free = 0.0
keepalive_check_s = 0.1

[power]
power_on_delay_s = 0.0
power_off_delay_s = 0.0

[dispatch]
start_workers = "on_upload"

[[machines]]
name = "spinn-1200"
tags = ["default"]
width = 20
height = 20
board_locations = "spinn1m-ethernet-chips.csv"
"""


def is_ci() -> bool:
    """Whether the tests run on CI, where a missing peer is a failure, not a skip."""
    return bool(os.environ.get("CI"))


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason, or fail when running on CI."""
    if is_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def write_server_config(directory: Path, toml_text: str = SERVER_TOML) -> Path:
    """Write a server config (and the board locations CSV it names) into a directory.

    Args:
        directory: where the files go.
        toml_text: the TOML text of the config.

    Returns:
        The path of the TOML file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BOARD_LOCATIONS_CSV, directory / BOARD_LOCATIONS_CSV.name)
    config_path = directory / "allotment.toml"
    config_path.write_text(toml_text)
    return config_path


class ServerProcess:
    """One `allotment serve` subprocess, with its stderr drained by a thread.

    Attributes:
        host: the address the server said it listens on.
        port: the port the server said it listens on.
    """

    def __init__(self, config_path: Path, db_url: str, cwd: Path) -> None:
        self._config_path = config_path
        self._db_url = db_url
        self._cwd = cwd
        self._lines: list[str] = []
        self._new_output = threading.Condition()
        self._ready = threading.Event()
        self.host = ""
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None
        self._restarts: list[ServerProcess] = []

    def __repr__(self) -> str:
        state = "not started" if self._proc is None else f"pid {self._proc.pid}"
        return f"<ServerProcess {self.host}:{self.port} {state}>"

    @property
    def config_path(self) -> Path:
        """The configuration file the server reads (and re-reads on SIGHUP)."""
        return self._config_path

    @property
    def db_url(self) -> str:
        """The database the server uses."""
        return self._db_url

    def restarted(self) -> ServerProcess:
        """A new server process on the same configuration and database, started.

        It is stopped with this one (`stop`), so a test's restarts never outlive it.
        """
        again = ServerProcess(self._config_path, self._db_url, self._cwd)
        self._restarts.append(again)
        return again.start()

    def wait_for_output(self, text: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Wait until the server has written a line containing `text`; return that line.

        Raises:
            AssertionError: no such line within the timeout.
        """
        with self._new_output:
            found = self._new_output.wait_for(
                lambda: any(text in line for line in self._lines), timeout_s
            )
            if not found:
                raise AssertionError(f"server never wrote {text!r}; stderr:\n{self.stderr_text}")
            return next(line for line in self._lines if text in line)

    def send_signal(self, sig: int) -> None:
        """Send a signal to the running server."""
        assert self._proc is not None
        self._proc.send_signal(sig)

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far."""
        return "".join(self._lines)

    def start(self) -> ServerProcess:
        """Start the server and wait until it says where it listens.

        Raises:
            AssertionError: the server exited or did not become ready in time.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._ready.clear()
        self._lines.clear()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allocator.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--config",
                str(self._config_path),
                "--db",
                self._db_url,
                # the allocation server alone: the batch service has tests of its own
                "--no-batch",
            ],
            cwd=self._cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._drain = threading.Thread(target=self._drain_stderr, args=(self._proc,), daemon=True)
        self._drain.start()
        if not self._ready.wait(READY_TIMEOUT_S) or not self.port:
            try:
                # stderr closed: the process is ending; give it a moment to be reaped
                code: int | None = self._proc.wait(STOP_TIMEOUT_S if self._ready.is_set() else 0)
            except subprocess.TimeoutExpired:
                code = None
            if code is None:
                self.kill()
            raise AssertionError(
                f"server did not report 'listening on' (exit code {code}); stderr:\n"
                f"{self.stderr_text}"
            )
        return self

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            with self._new_output:
                self._lines.append(line)
                self._new_output.notify_all()
            if not self._ready.is_set():
                match = _LISTENING.search(line)
                if match:
                    self.host, self.port = match.group(1), int(match.group(2))
                    self._ready.set()
        self._ready.set()  # the process ended: wake a waiting start()

    def is_running(self) -> bool:
        """Whether the process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Ask the server (and any restart of it still running) to stop with a signal and
        return its exit code."""
        assert self._proc is not None
        for again in self._restarts:
            if again._proc is not None:
                with contextlib.suppress(AssertionError):
                    again.stop(sig)
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                raise AssertionError(
                    f"server ignored signal {sig} for {STOP_TIMEOUT_S} s; stderr:\n"
                    f"{self.stderr_text}"
                ) from None
        if self._drain is not None:
            self._drain.join(STOP_TIMEOUT_S)
        return self._proc.returncode

    def kill(self) -> None:
        """Kill the server with SIGKILL (no clean-up at all) and reap it."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._drain is not None:
            self._drain.join(STOP_TIMEOUT_S)


class RawClient:
    """A blocking JSON-lines client over a plain socket, for exact control of the bytes.

    Notifications received while waiting for a reply are kept in `notifications`.
    """

    def __init__(self, host: str, port: int, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self._buffer = b""
        self.notifications: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<RawClient {self.sock.getsockname()} buffered={len(self._buffer)}>"

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send_line(self, line: bytes) -> None:
        """Send bytes as they are (add the newline yourself)."""
        self.sock.sendall(line)

    def read_line(self) -> bytes | None:
        """Read one line; None when the server closed the connection."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def read_reply(self) -> dict[str, Any] | None:
        """Read the next reply (skipping notifications); None when the connection closed."""
        while True:
            line = self.read_line()
            if line is None:
                return None
            obj = json.loads(line)
            assert isinstance(obj, dict), f"reply is not an object: {line!r}"
            if "return" in obj or "exception" in obj:
                return obj
            self.notifications.append(obj)

    def next_notification(self) -> dict[str, Any]:
        """The oldest notification not yet taken, reading from the socket if none is queued."""
        if self.notifications:
            return self.notifications.pop(0)
        line = self.read_line()
        assert line is not None, "server closed the connection"
        obj = json.loads(line)
        assert isinstance(obj, dict), f"notification is not an object: {line!r}"
        return obj

    def wait_for_state(self, job_id: int, wanted: int) -> dict[str, Any]:
        """Wait (on notifications, no sleeping) until a job reaches a state."""
        self.call("notify_job", job_id)
        while True:
            state: dict[str, Any] = self.call("get_job_state", job_id)
            if state["state"] == wanted:
                return state
            self.next_notification()

    def request(self, command: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Send one command and return the raw reply object."""
        line = json.dumps({"command": command, "args": list(args), "kwargs": kwargs})
        self.send_line(line.encode() + b"\n")
        reply = self.read_reply()
        assert reply is not None, f"server closed the connection after {command}"
        return reply

    def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """Send one command and return its value; raise on an exception reply."""
        reply = self.request(command, *args, **kwargs)
        assert "exception" not in reply, f"{command} failed: {reply['exception']}"
        return reply["return"]


def require_server_module() -> None:
    """Skip (fail on CI) when the server has not been written yet."""
    if importlib.util.find_spec("allocator.cli") is None:
        skip_or_fail("allocator.cli does not exist yet: no server to test")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """A factory that starts servers on fresh SQLite files; all are stopped at teardown.

    Call it as `start_server(db_url=None, config_text=SERVER_TOML, directory=None)`.
    """
    require_server_module()
    servers: list[ServerProcess] = []

    def start(
        db_url: str | None = None, config_text: str = SERVER_TOML, directory: Path | None = None
    ) -> ServerProcess:
        where = directory if directory is not None else tmp_path / f"server{len(servers)}"
        config_path = write_server_config(where, config_text)
        url = db_url if db_url is not None else f"sqlite:///{where / 'allotment.db'}"
        server = ServerProcess(config_path, url, where)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        with contextlib.suppress(AssertionError):
            server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole test module (tests use their own owners and jobs)."""
    require_server_module()
    where = tmp_path_factory.mktemp("shared-server")
    config_path = write_server_config(where)
    server = ServerProcess(config_path, f"sqlite:///{where / 'allotment.db'}", where)
    server.start()
    yield server
    code = server.stop()
    assert code == 0, f"server exit code {code} on SIGTERM; stderr:\n{server.stderr_text}"


@pytest.fixture
def raw_client(shared_server: ServerProcess) -> Iterator[Any]:
    """A factory of `RawClient`s connected to the shared server, closed at teardown."""
    clients: list[RawClient] = []

    def connect() -> RawClient:
        client = RawClient(shared_server.host, shared_server.port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def _install_spalloc_700() -> str | None:
    """Install spalloc 1!7.0.0 into the cache directory; return an error text or None.

    Besides the client it needs the SpiNNUtilities release it was made with (1!7.0.0: newer
    ones dropped the context-manager hook its `ProtocolClient` overrides), and appdirs and
    jsonschema, which the environment normally has already.
    """
    packages = ["spalloc==1!7.0.0", "SpiNNUtilities==1!7.0.0"]
    packages += [
        name for name in ("appdirs", "jsonschema") if importlib.util.find_spec(name) is None
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(SPALLOC_700_DIR),
            *packages,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        return result.stderr.strip()[-2000:]
    return None


@pytest.fixture(scope="session")
def spalloc_700_path() -> Path:
    """The directory holding spalloc 1!7.0.0 (installed on first use)."""
    installed = SPALLOC_700_DIR / "spalloc_client" / "job.py", SPALLOC_700_DIR / "spinn_utilities"
    if not all(path.exists() for path in installed):
        error = _install_spalloc_700()
        if error is not None:
            skip_or_fail(f"could not install spalloc 1!7.0.0: {error}")
    probe = subprocess.run(
        [sys.executable, "-c", "import spalloc_client; print(spalloc_client.__version__)"],
        env=client_env("7.0.0", SPALLOC_700_DIR),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.stdout.strip() != "1!7.0.0":
        skip_or_fail(f"spalloc 1!7.0.0 does not import: {probe.stdout}{probe.stderr}")
    return SPALLOC_700_DIR


def client_env(version: str, spalloc_700: Path | None, home: Path | None = None) -> dict[str, str]:
    """The environment for a client subprocess of one version.

    Args:
        version: "7.4.1" (the installed client) or "7.0.0".
        spalloc_700: where 1!7.0.0 is installed (needed for "7.0.0").
        home: a private home directory so that no user config file is read.
    """
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if version == "7.0.0":
        assert spalloc_700 is not None
        paths.insert(0, str(spalloc_700))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if home is not None:
        env["HOME"] = str(home)
        env["XDG_CONFIG_HOME"] = str(home / ".config")
        env["XDG_CONFIG_DIRS"] = str(home / "etc-xdg")
    env.pop("SPALLOC_CONFIG", None)
    return env


@pytest.fixture(params=CLIENT_VERSIONS)
def client_version(request: pytest.FixtureRequest) -> str:
    """Each real client version in turn; "7.0.0" installs it first."""
    version: str = request.param
    if version == "7.0.0":
        request.getfixturevalue("spalloc_700_path")
    return version


def run_python(
    code: str,
    argv: Sequence[str],
    version: str,
    *,
    cwd: Path | None = None,
    home: Path | None = None,
    stdin_text: str | None = None,
    timeout_s: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run Python code under one client version in a subprocess and capture its output."""
    spalloc_700 = SPALLOC_700_DIR if version == "7.0.0" else None
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        env=client_env(version, spalloc_700, home),
        cwd=cwd if cwd is not None else REPO_ROOT,
        input=stdin_text if stdin_text is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
