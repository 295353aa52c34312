"""Power of two random choices: sample two upstreams, send to the less loaded one.

Nearly as good as least connections at spreading load, but O(1) per pick and without
the herd effect where every worker sends to the same momentarily idle upstream (each
worker process has its own in-flight view). Load is ``inflight / weight`` compared by
cross-multiplying. The random source is injectable so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from edge.balance.base import Balancer, UpstreamState
from edge.policy.model import Service

__all__ = ["P2C"]


class P2C(Balancer):
    """Two distinct random healthy upstreams; the less loaded wins (a tie by weighted coin)."""

    __slots__ = ("_random",)

    def __init__(
        self,
        upstreams: list[UpstreamState],
        service: Service | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(upstreams, service)
        # A bound method of the generator: one C call per draw.
        self._random: Callable[[], float] = (rng or random.Random()).random

    def pick(self, key: str | None = None) -> UpstreamState | None:
        upstreams = self.upstreams
        count = len(upstreams)
        if count < 2:
            if count and upstreams[0].healthy:
                return upstreams[0]
            return None
        draw = self._random
        i = int(draw() * count)
        j = int(draw() * (count - 1))
        if j >= i:
            j += 1
        a = upstreams[i]
        b = upstreams[j]
        if a.healthy:
            if not b.healthy:
                return a
            load_a = a.inflight * b.weight
            load_b = b.inflight * a.weight
            if load_a == load_b and a.weight != b.weight:
                # A tie (typically both idle): lean on weight, so weights count at low traffic too.
                return a if draw() * (a.weight + b.weight) < a.weight else b
            return b if load_b < load_a else a
        if b.healthy:
            return b
        return self._least_loaded()

    def _least_loaded(self) -> UpstreamState | None:
        """Both samples were down: fall back to a scan so a healthy upstream is always found."""
        best: UpstreamState | None = None
        for state in self.upstreams:
            if state.healthy and (best is None or state.inflight * best.weight < best.inflight * state.weight):
                best = state
        return best

    def candidates(self, key: str | None = None) -> list[UpstreamState]:
        """The p2c pick first, then the other healthy upstreams from least to most loaded."""
        first = self.pick(key)
        if first is None:
            return []
        rest = [s for s in self.upstreams if s.healthy and s is not first]
        rest.sort(key=lambda s: s.inflight / s.weight)
        rest.insert(0, first)
        return rest
