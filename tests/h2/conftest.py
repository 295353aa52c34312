"""Fixtures for HTTP/2 tests: a demo PKI, real edge processes with a TLS listener, test origins."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.ca.authority import ensure_demo_pki
from tests.support.procs import DemoUpstream, Edge, RecordingUpstream, free_port


@dataclass(frozen=True)
class Pki:
    cert: Path
    key: Path
    root: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    cert, key, root = ensure_demo_pki(tmp_path_factory.mktemp("h2pki"))
    return Pki(cert, key, root)


class HoldingUpstream:
    """A raw origin that reads request heads and never answers nor reads a body.

    ``requests`` counts heads seen; ``closed`` is released when edge closes a connection to it
    (how a cancelled exchange shows), noticed by POLLRDHUP without reading the body.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = threading.Semaphore(0)
        self.closed = threading.Semaphore(0)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(1)  # byte by byte: leave the body unread
                if not data:
                    break
                buf += data
            else:
                self.requests.release()
                poller = select.poll()
                poller.register(conn, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
                while not poller.poll(1000):
                    pass
        except OSError:
            pass
        self.closed.release()

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@dataclass
class Stack:
    edge: Edge
    port: int
    pki: Pki
    demo: DemoUpstream
    rec: RecordingUpstream
    hold: HoldingUpstream

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"


def stack_policy(port: int, pki: Pki, demo: str, rec: str, hold: str, dead: int) -> str:
    return f"""
version: 1
limits: {{max_header_size: 4KiB, max_body_size: 64MiB}}
listeners:
  websecure:
    listen: ["127.0.0.1:{port}"]
    tls:
      certificates: [{{cert: "{pki.cert}", key: "{pki.key}"}}]
services:
  app: {{upstreams: [{{url: "{demo}"}}]}}
  rec: {{upstreams: [{{url: "{rec}"}}], max_connections: 1}}
  hold: {{upstreams: [{{url: "{hold}"}}], timeouts: {{response_header: 30s}}}}
  dead: {{upstreams: [{{url: "http://127.0.0.1:{dead}"}}], retries: 0}}
  slow: {{upstreams: [{{url: "{demo}"}}], timeouts: {{response_header: 300ms}}}}
routes:
  - {{name: rec, host: rec.localhost, service: rec}}
  - {{name: hold, host: hold.localhost, service: hold}}
  - {{name: dead, host: dead.localhost, service: dead}}
  - {{name: slow, host: slow.localhost, service: slow}}
  - {{name: app, host: localhost, service: app, headers: {{add_response: {{X-Served-By: edge}}}}}}
  - {{name: any, path_prefix: /headers, service: app}}
"""


@pytest.fixture(scope="module")
def stack(pki: Pki) -> Iterator[Stack]:
    demo, rec, hold = DemoUpstream("h2demo"), RecordingUpstream(), HoldingUpstream()
    port = free_port()
    edge = Edge(stack_policy(port, pki, demo.url, rec.url, hold.url, free_port()), port)
    yield Stack(edge, port, pki, demo, rec, hold)
    edge.stop()
    demo.stop()
    rec.close()
    hold.close()
