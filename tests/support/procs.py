"""Real processes and sockets for integration tests: edge itself, upstreams, a recording origin.

Everything listens on 127.0.0.1 with ports the OS hands out; every wait polls with a
deadline (no fixed sleeps); every process is killed at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.guard import connect

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with connect(host, port, timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    """A child process with its output captured to a file."""

    def __init__(self, args: list[str], name: str, env: dict | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"edge-test-{name}-")
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - lives as long as the process
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._err, cwd=ROOT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def stdout(self) -> str:
        return Path(self.out_path).read_text(errors="replace")

    def stderr(self) -> str:
        return Path(self.err_path).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self._err.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class DemoUpstream(Proc):
    """The aiohttp demo upstream (edge.demo) on a free port."""

    def __init__(self, name: str = "up", port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__([sys.executable, "-m", "edge.demo", "--listen", f"127.0.0.1:{self.port}", "--name", name],
                         f"upstream-{name}")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, what=f"demo upstream {name}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"demo upstream failed: {self.stderr()}")


class Edge(Proc):
    """``edge serve`` on a policy written from text; ``port`` is the first listener's port."""

    def __init__(self, policy_text: str, port: int, admin_port: int | None = None, wait: bool = True) -> None:
        fd, self.policy_path = tempfile.mkstemp(prefix="edge-policy-", suffix=".yaml")
        with os.fdopen(fd, "w") as handle:
            handle.write(policy_text)
        self.port = port
        self.admin_port = admin_port
        super().__init__([sys.executable, "-m", "edge", "serve", "-c", self.policy_path], "edge")
        if wait:
            wait_until(lambda: port_open(port) or self.proc.poll() is not None, what="edge serve")
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge serve exited {self.proc.returncode}: {self.stderr()}")
            if admin_port:
                wait_until(lambda: port_open(admin_port), what="edge admin")

    def rewrite(self, policy_text: str) -> None:
        tmp = self.policy_path + ".tmp"
        Path(tmp).write_text(policy_text)
        os.replace(tmp, self.policy_path)

    def reload(self) -> None:
        self.signal(signal.SIGHUP)

    def access_log(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.startswith("{")]


def simple_policy(port: int, upstreams: list[str], admin_port: int | None = None, extra: str = "",
                  service_extra: str = "", route_extra: str = "") -> str:
    ups = ", ".join(f'{{url: "{u}"}}' for u in upstreams)
    admin = f"admin: {{listen: '127.0.0.1:{admin_port}'}}\n" if admin_port else ""
    return (
        f"version: 1\n{admin}"
        f"listeners:\n  web: {{listen: ['127.0.0.1:{port}']}}\n"
        f"services:\n  app: {{upstreams: [{ups}]{service_extra}}}\n"
        f"routes:\n  - {{name: app, service: app{route_extra}}}\n" + extra
    )


class RecordingUpstream:
    """A raw TCP origin that records every byte it receives and answers each request with 200.

    Used to prove that bad requests never reach an upstream. It answers one canned
    response per request head it sees (counted by blank lines), good enough for GETs.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.received = bytearray()
        self.connections = 0
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(5)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with self._lock:
                    self.received += data
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class RawUpstream:
    """A loopback TCP server that runs ``handler(conn)`` in a thread per accepted connection:
    for upstreams that misbehave on purpose (reset, extra bytes)."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._handler = handler
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def read_head(conn: socket.socket) -> bytes | None:
    """The bytes of one request head (and whatever followed it in the same reads) from a raw
    upstream's connection; None when the peer closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    return buf


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes."""
    with connect("127.0.0.1", port, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
