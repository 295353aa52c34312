"""A real redis-server on a free loopback port, for the shared cache's tests."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.support.privileged import require
from tests.support.procs import DemoUpstream, Edge, Proc, free_port, wait_until


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Proc):
    """``redis-server`` in the foreground, nothing persisted, bounded like production should be."""

    def __init__(self, port: int | None = None) -> None:
        require(shutil.which("redis-server") is not None, "needs redis-server (scripts/setup installs it)")
        self.port = port or free_port()
        super().__init__(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
            "redis",
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_until(lambda: _ping(self.port) or self.proc.poll() is not None, what="redis-server")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server failed: {self.stdout()} {self.stderr()}")

    def command(self, *args: str) -> bytes:
        """One command in the inline protocol; the raw reply (tests read it loosely)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            return sock.recv(65536)


@contextmanager
def two_edges(policy: Callable[[int, DemoUpstream, str], str], name: str) -> Iterator[tuple[RedisServer, DemoUpstream,
                                                                                            Edge, Edge]]:
    """A redis-server, a demo upstream and two edge instances on ``policy(port, upstream,
    redis_url)``; everything stopped on the way out."""
    redis = RedisServer()
    up = DemoUpstream(name)
    a_port, b_port = free_port(), free_port()
    started: list[Proc] = [redis, up]
    try:
        started.append(Edge(policy(a_port, up, redis.url), a_port))
        started.append(Edge(policy(b_port, up, redis.url), b_port))
        yield redis, up, started[2], started[3]  # type: ignore[misc]
    finally:
        for proc in reversed(started):
            proc.stop()
