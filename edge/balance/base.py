"""The balancer interface: which upstream of a service gets the next request.

A balancer sees only ``UpstreamState`` objects (in-flight count, health, weight) and a
request key; it never touches sockets or clocks. ``pick`` is the hot path: one call,
no allocation, returns the preferred healthy upstream or ``None``. ``candidates``
returns every healthy upstream in order of preference so that a retry walks on to the
next one (pingora's shape). Health and in-flight counts are written by the shell
(pool and health checker) and only read here.
"""

from __future__ import annotations

from edge.policy.model import Service, Upstream

__all__ = ["Balancer", "RoundRobin", "UpstreamState"]


class UpstreamState:
    """Live facts about one upstream of one service, shared by balancer, pool and metrics."""

    __slots__ = ("healthy", "host", "index", "inflight", "label", "port", "upstream", "weight")

    def __init__(self, index: int, upstream: Upstream) -> None:
        self.index = index
        self.upstream = upstream
        self.host = upstream.host
        self.port = upstream.port
        self.label = upstream.label
        self.weight = upstream.weight
        self.inflight = 0
        self.healthy = True

    def __repr__(self) -> str:
        return f"<upstream {self.label} inflight={self.inflight} healthy={self.healthy}>"


class Balancer:
    """Base: subclasses implement ``candidates``; ``pick`` may be overridden for speed."""

    __slots__ = ("upstreams",)

    def __init__(self, upstreams: list[UpstreamState], service: Service | None = None) -> None:
        self.upstreams = upstreams

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        raise NotImplementedError

    def pick(self, key: str | None = None) -> UpstreamState | None:
        found = self.candidates(key)
        return found[0] if found else None


class RoundRobin(Balancer):
    """Each healthy upstream in turn."""

    __slots__ = ("_next",)

    def __init__(self, upstreams: list[UpstreamState], service: Service | None = None) -> None:
        super().__init__(upstreams, service)
        self._next = 0

    def pick(self, key: str | None = None) -> UpstreamState | None:
        upstreams = self.upstreams
        start = self._next
        state = upstreams[start]  # the common case: the next one is healthy
        if state.healthy:
            start += 1
            self._next = start if start < len(upstreams) else 0
            return state
        count = len(upstreams)
        for step in range(count):
            state = upstreams[(start + step) % count]
            if state.healthy:
                self._next = (start + step + 1) % count
                return state
        return None

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        upstreams = self.upstreams
        count = len(upstreams)
        start = self._next
        ordered = [upstreams[(start + i) % count] for i in range(count)]
        found = [u for u in ordered if u.healthy]
        if found:
            self._next = (found[0].index + 1) % count
        return found
