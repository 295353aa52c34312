"""Test helpers: a fake clock and upstream lists, so policy logic runs without time or sockets."""

from __future__ import annotations

from edge.balance.base import UpstreamState
from edge.policy.model import Upstream


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def upstreams(*weights: int, base_port: int = 8080) -> list[UpstreamState]:
    """UpstreamStates for 10.0.10.1:8080, :8081, ... with the given weights."""
    return [
        UpstreamState(i, Upstream(url=f"http://10.0.10.1:{base_port + i}", weight=w)) for i, w in enumerate(weights)
    ]
