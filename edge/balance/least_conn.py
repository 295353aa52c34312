"""Least connections, weight-aware: the healthy upstream with the lowest inflight / weight.

Loads are compared by cross-multiplying (``a.inflight * b.weight < b.inflight *
a.weight``), so no division and no float rounding decides a tie. Ties go in turn, as in
nginx: smooth weighted round robin among the equally loaded upstreams, which with equal
weights is plain round robin, and which keeps the weights meaningful at low traffic (when
every request finishes before the next arrives, every upstream is always tied at zero).
In-flight counts are written by the shell's pool; this module only reads them.
"""

from __future__ import annotations

from edge.balance.base import Balancer, UpstreamState
from edge.policy.model import Service

__all__ = ["LeastConn"]


class LeastConn(Balancer):
    """Fewest in-flight requests per unit of weight; ties by smooth weighted round robin."""

    __slots__ = ("_current",)

    def __init__(self, upstreams: list[UpstreamState], service: Service | None = None) -> None:
        super().__init__(upstreams, service)
        self._current = [0] * len(upstreams)

    def pick(self, key: str | None = None) -> UpstreamState | None:
        upstreams = self.upstreams
        # Pass 1: the lowest load, as the fraction best_load / best_weight.
        best_load = -1
        best_weight = 1
        for state in upstreams:
            if state.healthy and (best_load < 0 or state.inflight * best_weight < best_load * state.weight):
                best_load = state.inflight
                best_weight = state.weight
        if best_load < 0:
            return None
        # Pass 2: smooth weighted round robin among the upstreams at that load.
        current = self._current
        total = 0
        chosen = -1
        chosen_score = 0
        for i, state in enumerate(upstreams):
            if state.healthy and state.inflight * best_weight == best_load * state.weight:
                weight = state.weight
                score = current[i] + weight
                current[i] = score
                total += weight
                if chosen < 0 or score > chosen_score:
                    chosen = i
                    chosen_score = score
        current[chosen] = chosen_score - total
        return upstreams[chosen]

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        """The pick first, then the other healthy upstreams from least to most loaded."""
        first = self.pick(key)
        if first is None:
            return []
        current = self._current
        rest = [s for s in self.upstreams if s.healthy and s is not first]
        rest.sort(key=lambda s: (s.inflight / s.weight, -(current[s.index] + s.weight)))
        rest.insert(0, first)
        return rest
