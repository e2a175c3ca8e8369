"""Inside a batch job's sandbox: the allocation server's address, relayed to the runner.

Run as a file, not as a module of the package (the standard library only, so that it
starts at once)::

    python relay.py HOST PORT SOCKET -- COMMAND...

It listens on HOST:PORT in the sandbox's own network namespace (where the job's
`spynnaker.cfg` says the allocation server is), relays every connection to the Unix socket
SOCKET (the runner's gateway, `jobqueue.gateway`, bound into the sandbox), runs COMMAND and
exits as COMMAND exits; a signal that ended COMMAND ends the relay the same way, so the
runner reads the job's end as it would without the relay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

_CHUNK = 256 * 1024


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy one direction until its end, then pass the end on."""
    try:
        while chunk := source.recv(_CHUNK):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _relay(client: socket.socket, socket_path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _serve(listener: socket.socket, socket_path: str) -> None:
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_relay, args=(client, socket_path), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: relay.py HOST PORT SOCKET -- COMMAND...", file=sys.stderr)
        return 2
    host, port_text, socket_path, command = argv[0], argv[1], argv[2], argv[4:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, int(port_text)))
    except (OSError, ValueError) as error:
        print(f"allotment: the allocation server cannot be relayed: {error}", file=sys.stderr)
        return 2
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, socket_path), daemon=True).start()
    child = subprocess.Popen(command)
    for forwarded in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(forwarded, lambda number, _frame: child.send_signal(number))
    returncode = child.wait()
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
