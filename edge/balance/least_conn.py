"""Least connections, weight-aware: the healthy upstream with the lowest inflight / weight.

Loads are compared by cross-multiplying (``a.inflight * b.weight < b.inflight *
a.weight``), so no division and no float rounding decides a tie. Ties go round robin: the
scan starts after the last pick and only a strictly lower load displaces the first
candidate found, so equally idle upstreams take turns. In-flight counts are written by
the shell's pool; this module only reads them.
"""

from __future__ import annotations

from edge.balance.base import Balancer, UpstreamState
from edge.policy.model import Service

__all__ = ["LeastConn"]


class LeastConn(Balancer):
    """Fewest in-flight requests per unit of weight; ties in turn."""

    __slots__ = ("_next",)

    def __init__(self, upstreams: list[UpstreamState], service: Service | None = None) -> None:
        super().__init__(upstreams, service)
        self._next = 0

    def pick(self, key: str | None = None) -> UpstreamState | None:
        upstreams = self.upstreams
        count = len(upstreams)
        position = self._next
        best: UpstreamState | None = None
        best_at = 0
        best_load = 0
        best_weight = 1
        for _ in range(count):
            if position >= count:
                position = 0
            state = upstreams[position]
            if state.healthy and (best is None or state.inflight * best_weight < best_load * state.weight):
                best = state
                best_at = position
                best_load = state.inflight
                best_weight = state.weight
            position += 1
        if best is not None:
            self._next = best_at + 1 if best_at + 1 < count else 0
        return best

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        """Healthy upstreams from least to most loaded; ties in round-robin order."""
        upstreams = self.upstreams
        count = len(upstreams)
        start = self._next
        order = {id(s): (i - start) % count for i, s in enumerate(upstreams)}
        found = [s for s in upstreams if s.healthy]
        found.sort(key=lambda s: (s.inflight / s.weight, order[id(s)]))
        if found:
            at = upstreams.index(found[0])
            self._next = at + 1 if at + 1 < count else 0
        return found
