"""Smooth weighted round robin (nginx's): weights 3:1 give a a b a, not a a a b.

Each pick adds every healthy upstream's weight to its running score, takes the highest
score and subtracts the total from it. Over any window of ``sum(weights)`` picks each
upstream is chosen exactly ``weight`` times (when health does not change), and picks of
the heavy upstream are spread out rather than bunched. Unhealthy upstreams are skipped
and keep their score. Must not know: sockets, clocks, health-check timing.
"""

from __future__ import annotations

from edge.balance.base import Balancer, UpstreamState
from edge.policy.model import Service

__all__ = ["Weighted"]


class Weighted(Balancer):
    """Smooth weighted round robin over the healthy upstreams."""

    __slots__ = ("_current",)

    def __init__(self, upstreams: list[UpstreamState], service: Service | None = None) -> None:
        super().__init__(upstreams, service)
        self._current = [0] * len(upstreams)

    def pick(self, key: str | None = None) -> UpstreamState | None:
        current = self._current
        total = 0
        best = -1
        best_score = 0
        for i, state in enumerate(self.upstreams):
            if not state.healthy:
                continue
            weight = state.weight
            score = current[i] + weight
            current[i] = score
            total += weight
            if best < 0 or score > best_score:
                best = i
                best_score = score
        if best < 0:
            return None
        current[best] = best_score - total
        return self.upstreams[best]

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        """The pick first, then the other healthy upstreams by how soon they would be picked."""
        first = self.pick(key)
        if first is None:
            return []
        current = self._current
        rest = [s for s in self.upstreams if s.healthy and s is not first]
        rest.sort(key=lambda s: -(current[s.index] + s.weight))
        rest.insert(0, first)
        return rest
