"""Upstream health: active check thresholds and passive ejection, as one state machine.

Owns: ``HealthState`` per upstream (UP, DOWN, EJECTED), the table of allowed moves and the
one ``transition`` function, and the single write to ``UpstreamState.healthy`` that the
balancers read.

- Active checks (``health_check:``): ``unhealthy`` consecutive failed checks take an
  upstream DOWN; ``healthy`` consecutive passed checks bring it back UP.
- Passive detection (real traffic): ``PASSIVE_FAILURES`` consecutive connect failures,
  timeouts or 5xx EJECT an upstream for a cool-down; then it is tried again on
  probation: one more failure ejects it again for twice as long (up to
  ``MAX_COOL_DOWN``), a success clears the record.
- Passive ejection never takes a service's last healthy upstream: a single NAS app that
  answers 500 on one broken page should keep serving its other pages, not turn into
  503s. Active checks are authoritative and may take every upstream DOWN.

Must not know: sockets, clocks, timers (the shell runs the checks every ``interval`` and
calls ``tick(now)`` about once a second to end cool-downs).
"""

from __future__ import annotations

import math
from enum import Enum

from edge.balance.base import UpstreamState
from edge.policy.model import HealthCheck

__all__ = [
    "COOL_DOWN",
    "MAX_COOL_DOWN",
    "NO_RESPONSE",
    "PASSIVE_FAILURES",
    "HealthEvent",
    "HealthState",
    "InvalidTransition",
    "ServiceHealth",
    "UpstreamHealth",
    "check_passed",
    "transition",
]

# Passive detection defaults (the policy file has no knobs for them yet): three failures
# in a row is past a blip; ten seconds is short enough that a restarted container is back
# quickly and long enough not to hammer a dead one.
PASSIVE_FAILURES = 3
COOL_DOWN = 10.0
MAX_COOL_DOWN = 80.0
# ``record_response`` status for "no response at all": connect refused, reset, timeout.
NO_RESPONSE = 0


class HealthState(Enum):
    UP = "up"
    DOWN = "down"  # failed active checks; only passed checks bring it back
    EJECTED = "ejected"  # failed real requests; back after a cool-down


class HealthEvent(Enum):
    CHECKS_FAILED = "checks_failed"
    CHECKS_PASSED = "checks_passed"
    REQUESTS_FAILED = "requests_failed"
    COOLED_DOWN = "cooled_down"


class InvalidTransition(Exception):
    """An event with no meaning in the current state."""


_TRANSITIONS: dict[tuple[HealthState, HealthEvent], HealthState] = {
    (HealthState.UP, HealthEvent.CHECKS_FAILED): HealthState.DOWN,
    (HealthState.UP, HealthEvent.REQUESTS_FAILED): HealthState.EJECTED,
    (HealthState.EJECTED, HealthEvent.COOLED_DOWN): HealthState.UP,
    (HealthState.EJECTED, HealthEvent.CHECKS_FAILED): HealthState.DOWN,
    (HealthState.DOWN, HealthEvent.CHECKS_PASSED): HealthState.UP,
}


def transition(state: HealthState, event: HealthEvent) -> HealthState:
    """The state after ``event``; raises ``InvalidTransition`` for a move the table lacks."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} in state {state.value}") from None


def check_passed(status: int) -> bool:
    """An active check passes on 2xx and 3xx (a login redirect still means the app is up)."""
    return 200 <= status < 400


def response_failed(status: int) -> bool:
    """Passive detection counts no response (``NO_RESPONSE``) and every 5xx."""
    return status == NO_RESPONSE or status >= 500


_UP = HealthState.UP
_DOWN = HealthState.DOWN
_EJECTED = HealthState.EJECTED


class UpstreamHealth:
    """The health of one upstream; writes ``upstream.healthy`` on every change."""

    __slots__ = (
        "check_failures",
        "check_passes",
        "config",
        "cool_down",
        "ejected_until",
        "ejections",
        "failures",
        "state",
        "upstream",
    )

    def __init__(
        self,
        upstream: UpstreamState,
        config: HealthCheck | None = None,
        cool_down: float = COOL_DOWN,
    ) -> None:
        self.upstream = upstream
        self.config = config
        # Optimistic start (like Traefik): traffic flows at once; the first checks correct it.
        self.state = _UP
        upstream.healthy = True
        self.cool_down = cool_down
        self.check_passes = 0
        self.check_failures = 0
        self.failures = 0  # consecutive failed real requests
        self.ejections = 0  # consecutive ejections without a success in between (backoff)
        self.ejected_until = 0.0

    def _move(self, event: HealthEvent) -> HealthState:
        self.state = state = transition(self.state, event)
        self.upstream.healthy = state is _UP
        return state

    def record_check(self, ok: bool, now: float) -> HealthState | None:
        """One active check result; returns the new state when it changed."""
        config = self.config
        healthy_after = config.healthy if config is not None else 1
        unhealthy_after = config.unhealthy if config is not None else 1
        if ok:
            self.check_failures = 0
            self.check_passes += 1
            if self.state is _DOWN and self.check_passes >= healthy_after:
                self.failures = 0
                self.ejections = 0
                return self._move(HealthEvent.CHECKS_PASSED)
            return None
        self.check_passes = 0
        self.check_failures += 1
        if self.state is not _DOWN and self.check_failures >= unhealthy_after:
            return self._move(HealthEvent.CHECKS_FAILED)
        return None

    def record_response(self, status: int, now: float, may_eject: bool = True) -> HealthState | None:
        """One real request's outcome: its status, or ``NO_RESPONSE`` (0) for connect errors
        and timeouts. Returns the new state when it changed."""
        if status != NO_RESPONSE and status < 500:
            if self.failures or self.ejections:
                self.failures = 0
                self.ejections = 0  # off probation: the next ejection starts at the base cool-down
            return None
        if self.state is not _UP:
            return None  # a straggler from before the ejection; nothing new to learn
        self.failures += 1
        # On probation (just back from a cool-down) one failure is enough.
        threshold = 1 if self.ejections else PASSIVE_FAILURES
        if self.failures < threshold or not may_eject:
            return None
        self.ejected_until = now + min(MAX_COOL_DOWN, self.cool_down * (2**self.ejections))
        self.ejections += 1
        self.failures = 0
        return self._move(HealthEvent.REQUESTS_FAILED)

    def tick(self, now: float) -> HealthState | None:
        """End a cool-down that is over; returns UP when it did."""
        if self.state is _EJECTED and now >= self.ejected_until:
            return self._move(HealthEvent.COOLED_DOWN)
        return None

    def seconds_until_up(self, now: float) -> float:
        """A guess for Retry-After: cool-down left, or the checks needed to come back."""
        if self.state is _UP:
            return 0.0
        if self.state is _EJECTED:
            return max(0.0, self.ejected_until - now)
        config = self.config or HealthCheck()
        return config.interval * max(1, config.healthy - self.check_passes)

    # -- reload and persistence ----------------------------------------------------------
    def export_state(self, now: float) -> dict[str, float | str]:
        return {
            "state": self.state.value,
            "ejected_left": max(0.0, self.ejected_until - now) if self.state is _EJECTED else 0.0,
            "ejections": float(self.ejections),
            "check_passes": float(self.check_passes),
        }

    def import_state(self, data: dict[str, float | str], now: float) -> None:
        try:
            state = HealthState(data.get("state", "up"))
        except ValueError:
            state = _UP
        if state is _DOWN and self.config is None:
            state = _UP  # checks were removed from the policy: nothing would ever bring it back
        self.state = state
        self.upstream.healthy = state is _UP
        self.ejected_until = now + float(data.get("ejected_left", 0.0)) if state is _EJECTED else 0.0
        self.ejections = int(data.get("ejections", 0))
        self.check_passes = int(data.get("check_passes", 0))
        self.check_failures = 0
        self.failures = 0


class ServiceHealth:
    """The health of a service's upstreams, indexed like its ``UpstreamState`` list."""

    __slots__ = ("upstreams",)

    def __init__(
        self,
        upstreams: list[UpstreamState],
        config: HealthCheck | None = None,
        cool_down: float = COOL_DOWN,
    ) -> None:
        self.upstreams = [UpstreamHealth(u, config, cool_down) for u in upstreams]

    def record_check(self, index: int, ok: bool, now: float) -> HealthState | None:
        return self.upstreams[index].record_check(ok, now)

    def needs_record(self, index: int) -> bool:
        """Whether a success (status < 500) of upstream ``index`` would change anything: the hot
        path skips ``record_response`` when it would not."""
        health = self.upstreams[index]
        return bool(health.failures or health.ejections)

    def record_response(self, index: int, status: int, now: float) -> HealthState | None:
        """Passive result for upstream ``index``; never ejects the last healthy upstream."""
        health = self.upstreams[index]
        if status != NO_RESPONSE and status < 500:
            if health.failures or health.ejections:
                health.failures = 0
                health.ejections = 0
            return None
        others_up = any(h.state is _UP for h in self.upstreams if h is not health)
        return health.record_response(status, now, may_eject=others_up)

    def tick(self, now: float) -> list[tuple[UpstreamState, HealthState]]:
        """End cool-downs that are over; the changes, for the log."""
        changed = []
        for health in self.upstreams:
            if health.state is _EJECTED and health.tick(now) is not None:
                changed.append((health.upstream, _UP))
        return changed

    def any_healthy(self) -> bool:
        return any(h.state is _UP for h in self.upstreams)

    def retry_after(self, now: float) -> int:
        """Whole seconds for the 503 when no upstream is healthy: the soonest likely return."""
        soonest = min((h.seconds_until_up(now) for h in self.upstreams), default=1.0)
        return max(1, math.ceil(soonest))

    def export_state(self, now: float) -> dict[str, dict[str, float | str]]:
        """Keyed by upstream label (host:port), so a reload carries over unchanged upstreams."""
        return {h.upstream.label: h.export_state(now) for h in self.upstreams}

    def import_state(self, data: dict[str, dict[str, float | str]], now: float) -> None:
        for health in self.upstreams:
            saved = data.get(health.upstream.label)
            if saved is not None:
                health.import_state(saved, now)
        if not self.any_healthy() and all(h.state is not _DOWN for h in self.upstreams):
            # Every upstream ejected at once cannot happen live (the last one is kept); keep it so.
            self.upstreams[0].tick(math.inf)

    def carry_over(self, old: ServiceHealth, now: float) -> None:
        """Reload: keep the health of upstreams that stay (matched by label)."""
        self.import_state(old.export_state(now), now)
