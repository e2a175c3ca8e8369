"""A batch job's script reaches the allocation server only through the runner's gateway.

Its sandbox has a network of its own: the host's services (the database, the MQTT broker,
the batch API, the allocation server itself) cannot be reached. The gateway gives every
allocation the batch job's owner, and lets the script change only its own allocations.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobqueue.gateway import MAX_CONNECTIONS_PER_JOB, Gateway
from tests.jobqueue.conftest import run_job

RELAY = Path(__file__).resolve().parents[2] / "jobqueue" / "relay.py"

_HOSTILE = """\
import configparser, json, socket
cfg = configparser.ConfigParser()
cfg.read("spynnaker.cfg")
m = cfg["Machine"]
s = socket.create_connection((m["spalloc_server"], int(m["spalloc_port"])))
f = s.makefile("rwb")

def line(command, *args, **kwargs):
    return json.dumps({"command": command, "args": list(args), "kwargs": kwargs}).encode() + b"\\n"

def reply():
    while True:
        message = json.loads(f.readline())
        if "return" in message or "exception" in message:
            return message

def ask(command, *args, **kwargs):
    f.write(line(command, *args, **kwargs))
    f.flush()
    return reply()

OTHER = __OTHER__
mine = ask("create_job", owner="mallory", keepalive=60.0)["return"]
print("RESULT mine", mine)
print("RESULT list", json.dumps({j["job_id"]: j["owner"] for j in ask("list_jobs")["return"]}))
print("RESULT destroy_other", json.dumps(ask("destroy_job", OTHER, "gone")))
print("RESULT keepalive_other", json.dumps(ask("job_keepalive", job_id=OTHER)))
print("RESULT power_other", json.dumps(ask("power_off_job_boards", float(OTHER))))
print("RESULT state_other", json.dumps(ask("get_job_state", OTHER)))
print("RESULT admin", json.dumps(ask("admin_destroy_job", "x", OTHER)))
print("RESULT unknown", json.dumps(ask("format_disk")))
f.write(b"not json\\n")
f.flush()
print("RESULT malformed", json.dumps(reply()))
# three at once: the gateway's own refusal keeps its place between the server's replies
f.write(line("get_job_state", mine) + line("destroy_job", OTHER) + line("version"))
f.flush()
print("RESULT pipelined", json.dumps([reply(), reply(), reply()]))
print("RESULT keepalive_mine", json.dumps(ask("job_keepalive", mine)))
reached = []
for port in (5432, 1883, __BATCH_PORT__):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        reached.append(port)
    except OSError:
        pass
print("RESULT reached", json.dumps(reached))
# a long request, once re-encoded no longer than it came, goes through
tags = ["\u00e9" * 1000] * 30
request = {"command": "create_job", "args": [], "kwargs": {"owner": "x", "tags": tags}}
f.write(json.dumps(request, ensure_ascii=False).encode() + b"\\n")
f.flush()
print("RESULT long", json.dumps(reply()))
# an overlong line: the replies to the lines before it first, then the refusal, then the end
f.write(line("version") + line("list_machines") + b"[" * 70000 + b"\\n")
f.flush()
ends = [reply(), reply(), reply()]
print("RESULT overlong", json.dumps(["return" in ends[0], "return" in ends[1], ends[2]]))
print("RESULT closed", json.dumps(f.readline() == b""))
"""


def _results(log: str) -> dict[str, Any]:
    found = {}
    for text in log.splitlines():
        if text.startswith("RESULT "):
            _, name, value = text.split(" ", 2)
            found[name] = json.loads(value)
    return found


def _ask(port: int, command: str, *args: Any, **kwargs: Any) -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = {"command": command, "args": list(args), "kwargs": kwargs}
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(sock.makefile("rb").readline())
    assert "return" in reply, reply
    return reply["return"]


@pytest.mark.timeout(180)
def test_a_script_holds_only_its_own_allocations_and_reaches_no_host_service(
    full_service: Any, nmpi_client: Any
) -> None:
    service = full_service()
    client = nmpi_client(service, service.token())
    port = service.spalloc_port
    other = _ask(port, "create_job", owner="bob", keepalive=120.0)
    batch_port = int(service.url.rsplit(":", 1)[1].strip("/"))

    script = _HOSTILE.replace("__OTHER__", str(other)).replace("__BATCH_PORT__", str(batch_port))
    job = run_job(client, script)
    assert job["status"] == "finished", job["log"]
    found = _results(job["log"])
    mine = found["mine"]
    refused = f"job {other} is not an allocation of batch job {job['id']}"

    # the owner the script gave is replaced by the batch job's
    assert found["list"][str(mine)] == f"alice nmpi-job-{job['id']}"
    assert found["list"][str(other)] == "bob"
    # another user's job cannot be destroyed, kept alive or powered off (7.0 is job 7)
    assert found["destroy_other"] == {"exception": refused}
    assert found["keepalive_other"] == {"exception": refused}
    assert found["power_other"] == {"exception": refused}
    # nor polled (get_job_state counts as a keepalive): it would never expire
    assert found["state_other"] == {"exception": refused}
    assert found["admin"] == {"exception": "admin_destroy_job is not available to batch jobs"}
    assert found["unknown"] == {"exception": "unknown command 'format_disk'"}
    assert "exception" in found["malformed"]
    assert "not valid json" in found["malformed"]["exception"]
    state, refusal, version = found["pipelined"]
    assert state["return"]["state"] in (1, 2, 3)
    assert refusal == {"exception": refused}
    assert "return" in version
    assert found["keepalive_mine"] == {"return": None}
    # neither the database, nor the broker, nor the batch API is reachable from inside
    assert found["reached"] == []
    # 60 kB of UTF-8 that plain JSON would escape to 180 kB still fits the server's line
    assert "exception" not in found["long"], found["long"]
    assert found["overlong"] == [
        True,
        True,
        {"exception": "request line longer than 65536 bytes; closing the connection"},
    ]
    assert found["closed"] is True

    # the other user's job lives on; the script's own ended with the batch job
    assert _ask(port, "get_job_state", other)["state"] in (2, 3)
    after = _ask(port, "get_job_state", mine)
    assert after["state"] == 4, after  # destroyed
    assert after["reason"] == f"batch job {job['id']} ended"
    assert job["resource_usage"]["value"] > 0


def _relay(*command: str, socket_path: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(RELAY), "127.0.0.1", str(port), str(socket_path), "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(60)
def test_the_relay_exits_as_its_command_exits(tmp_path: Path) -> None:
    socket_path = tmp_path / "gateway.sock"
    done = _relay(sys.executable, "-c", "raise SystemExit(3)", socket_path=socket_path, port=0)
    assert done.wait(30) == 3
    # ended by a signal, as the CPU time limit ends it: the relay ends by the same signal
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGXCPU)"
    killed = _relay(sys.executable, "-c", suicide, socket_path=socket_path, port=0)
    assert killed.wait(30) == -signal.SIGXCPU


@pytest.mark.timeout(60)
def test_the_relay_carries_a_connection_to_the_gateway_socket_both_ways(tmp_path: Path) -> None:
    socket_path = tmp_path / "gateway.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.listen()

    def echo_upper() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data.upper())

    threading.Thread(target=echo_upper, daemon=True).start()
    port = _free_port()
    client = (
        "import socket, sys, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        s = socket.create_connection(('127.0.0.1', {port}))\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "s.sendall(b'x' * 300000 + b'end')\n"
        "s.shutdown(socket.SHUT_WR)\n"
        "got = b''\n"
        "while chunk := s.recv(65536):\n"
        "    got += chunk\n"
        "sys.stdout.write(str(len(got)) + ' ' + got[-3:].decode())\n"
    )
    relay = _relay(sys.executable, "-c", client, socket_path=socket_path, port=port)
    out, err = relay.communicate(timeout=30)
    assert relay.returncode == 0, err
    assert out.decode() == "300003 END"
    listener.close()


@pytest.mark.timeout(60)
def test_a_gateway_with_no_server_behind_it_says_so(tmp_path: Path) -> None:
    gateway = Gateway("127.0.0.1", _free_port())
    gateway.start()
    try:
        socket_path = tmp_path / "7.sock"
        gateway.open(7, "alice nmpi-job-7", socket_path)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(socket_path))
            reply = json.loads(sock.makefile("rb").readline())
        assert "cannot be reached" in reply["exception"]
        gateway.close(7)
        gone = (ConnectionRefusedError, FileNotFoundError)
        with socket.socket(socket.AF_UNIX) as sock, pytest.raises(gone):
            sock.connect(str(socket_path))
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
def test_a_job_holds_at_most_its_share_of_connections(tmp_path: Path) -> None:
    upstream = socket.create_server(("127.0.0.1", 0), backlog=256)  # accepts, never answers
    gateway = Gateway("127.0.0.1", upstream.getsockname()[1])
    gateway.start()
    held = []
    try:
        socket_path = tmp_path / "8.sock"
        gateway.open(8, "alice nmpi-job-8", socket_path)
        for _ in range(MAX_CONNECTIONS_PER_JOB):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(socket_path))
            held.append(sock)
        # one connection past the share is told so and closed (connections are taken in
        # the order they came); the others stay open
        with socket.socket(socket.AF_UNIX) as extra:
            extra.settimeout(10)
            extra.connect(str(socket_path))
            assert json.loads(extra.makefile("rb").readline()) == {
                "exception": f"batch job 8 has {MAX_CONNECTIONS_PER_JOB} connections to the"
                " allocation server open already; close one first"
            }
        held[0].settimeout(0.2)
        with pytest.raises(TimeoutError):
            held[0].recv(1)  # still open, waiting for the server
    finally:
        for sock in held:
            sock.close()
        gateway.stop()
        upstream.close()


_PEEK = """\
import json, os, socket
seen = {}
for path in (__PATHS__):
    try:
        with open(path) as f:
            seen[path] = f.read()
    except OSError as error:
        seen[path] = type(error).__name__
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(__SOCKET__)
    seen["socket"] = "connected"
except OSError as error:
    seen["socket"] = type(error).__name__
seen["run"] = sorted(os.listdir("/run")) if os.path.isdir("/run") else None
print("RESULT seen", json.dumps(seen))
"""


@pytest.mark.timeout(120)
def test_a_script_sees_nothing_of_the_services_files_or_sockets(alice: Any) -> None:
    # The whole host file system was readable: the service's working directory (its
    # configuration with the operator token, the dispatch folder with every user's images
    # and results) and any Unix socket under /run (the database's, on a real host).
    service, client = alice()
    secret = service.cwd / "secret.env"
    secret.write_text("ALLOTMENT_DB=postgresql://allotment:s3cret@db/allotment\n")
    secret.chmod(0o600)
    dispatch = service.cwd / "allotment-dispatch" / "7"
    dispatch.mkdir(parents=True)
    (dispatch / "results.bin").write_text("another user's results")
    listener = socket.socket(socket.AF_UNIX)
    socket_path = service.cwd / "db.sock"
    listener.bind(str(socket_path))
    listener.listen()
    paths = [str(secret), str(dispatch / "results.bin"), "/etc/hostname"]
    script = _PEEK.replace("__PATHS__", repr(paths)[1:-1] + ",").replace(
        "__SOCKET__", repr(str(socket_path))
    )
    try:
        job = run_job(client, script)
    finally:
        listener.close()
    assert job["status"] == "finished", job["log"]
    seen = _results(job["log"])["seen"]
    assert seen[str(secret)] == "FileNotFoundError"
    assert seen[str(dispatch / "results.bin")] == "FileNotFoundError"
    assert seen["socket"] == "FileNotFoundError"
    assert seen["run"] is None  # /run is not there at all
    assert seen["/etc/hostname"] not in ("FileNotFoundError", "PermissionError")  # /etc is


class _FakeServer:
    """An allocation server that answers as told, and keeps the lines it was sent."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, conn.makefile("rb") as reader:
            for raw in reader:
                request = json.loads(raw)
                self.lines.append(request)
                command = request["command"]
                if command == "create_job":
                    conn.sendall(b'{"return": 5}\n')
                elif command == "fetch_results":
                    body = b"x" * 300_000
                    head = {"return": {"n_bytes": len(body), "part": "all"}}
                    conn.sendall(json.dumps(head).encode() + b"\n")
                    for start in range(0, len(body), 50_000):  # slowly, in pieces
                        conn.sendall(body[start : start + 50_000])
                        time.sleep(0.05)
                else:
                    conn.sendall(b'{"exception": "refused by the fake"}\n')

    def close(self) -> None:
        self._listener.close()


@pytest.mark.timeout(60)
def test_the_gateway_names_the_owner_and_keeps_raw_bytes_whole(tmp_path: Path) -> None:
    # A first load_image naming the owner the script gave its create_job (now replaced)
    # was refused by the server; a refusal of the gateway's own could land inside the raw
    # bytes of a fetch_results reply.
    upstream = _FakeServer()
    gateway = Gateway("127.0.0.1", upstream.port)
    gateway.start()
    try:
        socket_path = tmp_path / "9.sock"
        gateway.open(9, "alice nmpi-job-9", socket_path)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(socket_path))
            reader = sock.makefile("rb")

            def send(command: str, *args: Any, **kwargs: Any) -> None:
                request = {"command": command, "args": list(args), "kwargs": kwargs}
                sock.sendall(json.dumps(request).encode() + b"\n")

            send("create_job", owner="mallory")
            assert json.loads(reader.readline()) == {"return": 5}
            send("load_image", 5, n_bytes=10, sha256="0" * 64, owner="mallory")
            assert json.loads(reader.readline()) == {"exception": "refused by the fake"}
            # fetch_results of its own job, then (pipelined) one the gateway refuses itself
            send("fetch_results", 5, "token", part="all", offset=0, max_bytes=300_000)
            send("destroy_job", 77)
            head = json.loads(reader.readline())
            assert head["return"]["n_bytes"] == 300_000
            assert reader.read(300_000) == b"x" * 300_000
            assert json.loads(reader.readline()) == {
                "exception": "job 77 is not an allocation of batch job 9"
            }
        load = next(line for line in upstream.lines if line["command"] == "load_image")
        assert load["kwargs"]["owner"] == "alice nmpi-job-9"
        create = next(line for line in upstream.lines if line["command"] == "create_job")
        assert create["kwargs"]["owner"] == "alice nmpi-job-9"
    finally:
        gateway.stop()
        upstream.close()
