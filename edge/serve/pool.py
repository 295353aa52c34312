"""Keep-alive connections to one upstream: lease, return, expire, cap, queue.

A pool owns the count of connections to its upstream (open and opening) and the
idle ones, most recently used first (warm sockets, fewer stale ones). A lease is
a callback on the requesting client connection (``upstream_ready`` or
``upstream_failed``), not an awaitable, so a reused connection costs no task and
no future. Beyond ``max_connections`` requests wait in FIFO order until a
connection comes back or their connect timeout ends (then 503).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING

from edge.balance import UpstreamState

if TYPE_CHECKING:
    from edge.serve.proxy import ClientConnection, UpstreamConnection

__all__ = ["UpstreamPool"]


class UpstreamPool:
    __slots__ = (
        "_factory",
        "closed",
        "connect_timeout",
        "count",
        "idle",
        "idle_timeout",
        "loop",
        "max_connections",
        "state",
        "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        state: UpstreamState,
        max_connections: int,
        connect_timeout: float,
        idle_timeout: float,
        factory,
    ) -> None:
        self.loop = loop
        self.state = state
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.count = 0
        self.waiters: deque[ClientConnection] = deque()
        self.closed = False
        self._factory = factory  # pool -> UpstreamConnection protocol

    def acquire(self, client: ClientConnection) -> None:
        """Hand ``client`` a connection now, open one, or queue it (see module docstring)."""
        if self.closed:  # the service was retired by a reload while this request was on its way
            client.upstream_failed(503, "service removed by a policy reload")
            return
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                client.upstream_ready(conn, True)
                return
            conn.close()
        if self.count < self.max_connections:
            self.count += 1
            self.loop.create_task(self._connect(client))
            return
        self.waiters.append(client)
        client.wait_for_pool(self.loop.time() + self.connect_timeout)

    def cancel_wait(self, client: ClientConnection) -> None:
        try:
            self.waiters.remove(client)
        except ValueError:
            pass

    async def _connect(self, client: ClientConnection | None) -> None:
        state = self.state
        try:
            _transport, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: self._factory(self), state.host, state.port),
                self.connect_timeout,
            )
        except TimeoutError:
            self._connect_failed(client, 504, "upstream connect timeout")
            return
        except (OSError, socket.gaierror) as exc:
            self._connect_failed(client, 502, f"upstream unreachable: {exc.strerror or exc}")
            return
        if self.closed:
            conn.close()
            return
        if client is not None and client.wants_upstream(self):
            client.upstream_ready(conn, False)
        else:
            self.release(conn)

    def _connect_failed(self, client: ClientConnection | None, status: int, reason: str) -> None:
        self.count -= 1
        if client is not None and client.wants_upstream(self):
            client.upstream_failed(status, reason, connect_failure=True)
        self._serve_waiter()

    def release(self, conn: UpstreamConnection) -> None:
        """A connection whose response is complete and that may be reused."""
        waiters = self.waiters
        while waiters:
            client = waiters.popleft()
            if client.wants_upstream(self):
                client.upstream_ready(conn, True)
                return
        if self.closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side); free its slot."""
        self.count -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._serve_waiter()

    def _serve_waiter(self) -> None:
        waiters = self.waiters
        while waiters and self.count < self.max_connections and not self.closed:
            client = waiters.popleft()
            if client.wants_upstream(self):
                self.count += 1
                self.loop.create_task(self._connect(client))
                return

    def drop_idle(self) -> None:
        """Close every idle connection (after one turned out stale)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def expire(self, now: float) -> None:
        """Close idle connections older than the service's idle timeout (called by the sweeper)."""
        limit = now - self.idle_timeout
        stale = [c for c in self.idle if c.idle_since <= limit]
        for conn in stale:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
