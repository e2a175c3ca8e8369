"""The sandbox a job's script runs in: bubblewrap namespaces plus kernel resource limits.

    runner thread ──Popen──> bwrap (own session, pid namespace, no capabilities)
                               └─ python run.py spiNNaker     (cwd = the job's directory)

Inside, the file system holds only what a job's Python needs, read-only: the system's
programs and libraries (`/usr` and its links `/bin`, `/lib`, ...), `/etc` (less
`/etc/allotment`, where a deployment keeps its secrets), and the directories the runner
names (the Python environment, allotment's packages, the shims). Nothing else of the host
exists: not the service's working directory (its database, its dispatch folder with every
user's images and results), not `/run` or `/var` (the database's and other services' Unix
sockets), not `/home` or `/root`. `/tmp` is private and as big as the job's output limit;
the directory holding every job's working directory is an empty, read-only tmpfs with only
this job's directory bound back in (read-write), so other jobs' files do not exist; the
service's SQLite files, should they lie under a directory that is there, are covered by
mode-000 empty files (capabilities dropped, so even uid 0 is refused). The network is the
sandbox's own, with nothing but its loopback: no service of the host (the allocation server,
the database, the MQTT broker, the batch API) can be reached. The runner binds one Unix
socket in, its gateway to the allocation server (`jobqueue.gateway`), which
`jobqueue/relay.py` serves inside at the address `spynnaker.cfg` names. Limits (setrlimit,
inherited by everything the script starts): CPU seconds, address space, size of any one
file written.
`--die-with-parent` and the pid namespace make sure nothing outlives the job: when bwrap's
child ends or the runner dies, every process inside is killed.

The job's environment is bwrap's to set inside (`--clearenv`, then `--setenv` each
variable): bwrap itself runs with a fixed environment of the runner's, so nothing a job
names (`LD_PRELOAD` and the like) reaches the process that sets the sandbox up.
"""

from __future__ import annotations

import os
import resource
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobqueue.errors import SandboxUnavailableError

__all__ = ["BWRAP_ENVIRONMENT", "Limits", "sandboxed_command"]

BWRAP_ENVIRONMENT: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
"""The environment bwrap itself runs with: the runner's own, never the job's."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job."""

    cpu_s: int
    memory_bytes: int
    file_bytes: int

    def apply(self) -> None:
        """Set the limits on the calling process (run in the child before exec)."""
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_bytes, self.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def preexec(self) -> Callable[[], None]:
        """The function Popen runs in the child."""
        return self.apply


def _memory_file(data: bytes) -> int:
    """A file descriptor of an anonymous file holding `data`, read from its start."""
    fd = os.memfd_create("bwrap-args")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


_SYSTEM_DIRECTORIES = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/var/cache/fontconfig",  # the system's font cache (else every figure builds its own)
)
_SECRET_DIRECTORIES = ("/etc/allotment",)
"""Under a system directory, but the service's own (its environment file, its config)."""


def _system_binds() -> list[str]:
    """bwrap arguments that make the system's programs, libraries and /etc visible, the
    links of a merged /usr as links, and /dev and /proc of the sandbox's own."""
    arguments: list[str] = []
    for path in _SYSTEM_DIRECTORIES:
        if os.path.islink(path):
            arguments += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    for path in _SECRET_DIRECTORIES:
        if os.path.isdir(path):
            arguments += ["--tmpfs", path, "--remount-ro", path]
    return [*arguments, "--dev", "/dev", "--proc", "/proc"]


def bwrap_path() -> str:
    """Where bubblewrap is; raises SandboxUnavailableError when it is not installed."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailableError(
            "bubblewrap (bwrap) is not installed; apt-get install bubblewrap"
        )
    return found


def sandboxed_command(
    argv: Sequence[str],
    *,
    workdir: Path,
    cwd: Path,
    jobs_root: Path,
    hidden_files: Sequence[str],
    visible: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    tmp_bytes: int | None = None,
    sockets: Mapping[str, Path] | None = None,
) -> tuple[list[str], list[int]]:
    """The bwrap command line that runs `argv` in `cwd`, isolated as described above.

    Args:
        argv: the program and its arguments.
        workdir: the job's own directory (read-write inside).
        cwd: where `argv` starts (the job's directory or a folder in it).
        jobs_root: the directory holding every job's directory (hidden inside).
        hidden_files: files to make unreadable (the database and its companions).
        visible: directories the job needs besides the system's (the Python environment,
            allotment's packages, the shims), bound read-only where they are.
        env: the job's whole environment, set inside the sandbox (run the command itself
            with `BWRAP_ENVIRONMENT`).
        tmp_bytes: the size of the private /tmp (None: the kernel's default).
        sockets: Unix sockets of the host to bind in, by their path inside (under /tmp).

    Returns:
        The command and the file descriptors it names (bwrap reads each once): pass them
        to Popen with `pass_fds` and close them once it has started.
    """
    command = [bwrap_path(), *_system_binds()]
    if tmp_bytes is not None:
        command += ["--size", str(tmp_bytes)]
    command += ["--tmpfs", "/tmp"]
    for directory in dict.fromkeys(visible):
        if directory.exists() and not directory.is_relative_to("/usr"):
            command += ["--ro-bind", str(directory), str(directory)]
    for inside, socket_path in (sockets or {}).items():
        command += ["--ro-bind", str(socket_path), inside]
    command += [
        "--tmpfs", str(jobs_root),
        "--bind", str(workdir), str(workdir),
        "--remount-ro", str(jobs_root),  # the job's own directory (a mount of its own) stays
    ]  # fmt: skip
    fds = []
    for path in hidden_files:
        # one under the jobs root is hidden already (an empty tmpfs, read-only: nothing could
        # be made there to cover it)
        if os.path.exists(path) and not Path(path).is_relative_to(jobs_root):
            fds.append(os.open(os.devnull, os.O_RDONLY))
            command += ["--perms", "000", "--ro-bind-data", str(fds[-1]), path]
    if env is not None:
        # From a file bwrap reads (--args), not its command line: any user on the host can
        # read a process's arguments, only its own user its environment.
        settings = ["--clearenv"]
        for key, value in env.items():
            settings += ["--setenv", key, value]
        fds.append(_memory_file("\0".join(settings).encode() + b"\0"))
        command += ["--args", str(fds[-1])]
    command += [
        "--cap-drop", "ALL",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--chdir", str(cwd),
        "--",
        *argv,
    ]  # fmt: skip
    return command, fds
