"""Circuit breaker per service: stop sending to a failing service, probe, and come back.

Owns: the breaker state (``CircuitState``: closed 0 / open 1 / half-open 2, the values of
``edge_circuit_state``), the one transition function over a table of allowed moves, and
the sliding window of outcomes that decides when to open.

Invariants: state changes only through ``transition``; while OPEN nothing is admitted
until ``open_for`` has passed; HALF_OPEN admits at most ``half_open_requests`` trials,
closes when all of them succeed and reopens on the first failure. The window is
``BUCKETS`` counters over ``window`` seconds, advanced lazily by ``now``, so the error
ratio covers the last ``window`` seconds to within one bucket.

Results carry the breaker ``generation`` they were admitted under (read it when
admitting); a result from an earlier generation (a slow request that started before the
breaker opened) is ignored so it cannot close or reopen the circuit by accident.

Must not know: sockets, clocks, which status codes count (the shell passes ok=False for
5xx, connect errors and timeouts).
"""

from __future__ import annotations

import math
from enum import Enum, IntEnum

from edge.policy.model import CircuitBreaker

__all__ = ["BUCKETS", "Breaker", "BreakerEvent", "CircuitState", "InvalidTransition", "transition"]

# Ten buckets: the window slides in tenths, so the ratio is at most 10 % stale at its old edge.
BUCKETS = 10


class CircuitState(IntEnum):
    """The breaker's state; the value is the ``edge_circuit_state`` metric."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class BreakerEvent(Enum):
    TRIP = "trip"  # error ratio reached over the window
    COOLED = "cooled"  # open_for has passed
    TRIAL_FAILED = "trial_failed"
    TRIALS_PASSED = "trials_passed"
    TRIALS_STALLED = "trials_stalled"  # trials admitted but never reported: re-arm


class InvalidTransition(Exception):
    """An event that has no meaning in the current state (a bug in the caller or here)."""


_TRANSITIONS: dict[tuple[CircuitState, BreakerEvent], CircuitState] = {
    (CircuitState.CLOSED, BreakerEvent.TRIP): CircuitState.OPEN,
    (CircuitState.OPEN, BreakerEvent.COOLED): CircuitState.HALF_OPEN,
    (CircuitState.HALF_OPEN, BreakerEvent.TRIAL_FAILED): CircuitState.OPEN,
    (CircuitState.HALF_OPEN, BreakerEvent.TRIALS_PASSED): CircuitState.CLOSED,
    (CircuitState.HALF_OPEN, BreakerEvent.TRIALS_STALLED): CircuitState.HALF_OPEN,
}


def transition(state: CircuitState, event: BreakerEvent) -> CircuitState:
    """The state after ``event``; raises ``InvalidTransition`` for a move the table lacks."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} in state {state.name}") from None


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN


class Breaker:
    """One service's breaker. Per request: ``allow(now)`` before, ``record(ok, now, gen)`` after."""

    __slots__ = (
        "_epoch",
        "_fail",
        "_fail_total",
        "_ok",
        "_ok_total",
        "_width",
        "changed_at",
        "config",
        "generation",
        "state",
        "trials_issued",
        "trials_ok",
    )

    def __init__(self, config: CircuitBreaker, now: float = 0.0) -> None:
        self.config = config
        self.state = _CLOSED
        # Bumped on every transition; results admitted under an older generation are ignored.
        self.generation = 0
        self.changed_at = now
        self.trials_issued = 0
        self.trials_ok = 0
        self._width = config.window / BUCKETS
        self._ok = [0] * BUCKETS
        self._fail = [0] * BUCKETS
        self._ok_total = 0
        self._fail_total = 0
        self._epoch = int(now // self._width)

    # -- per request -------------------------------------------------------------------
    def allow(self, now: float) -> bool:
        """May a request go upstream now? In HALF_OPEN a True reserves one trial."""
        state = self.state
        if state is _CLOSED:
            return True
        config = self.config
        if state is _OPEN:
            if now - self.changed_at < config.open_for:
                return False
            self._move(BreakerEvent.COOLED, now)
        if self.trials_issued < config.half_open_requests:
            self.trials_issued += 1
            return True
        if now - self.changed_at >= config.open_for:
            # Trials went out but never came back (client gone, result lost): probe again.
            self._move(BreakerEvent.TRIALS_STALLED, now)
            self.trials_issued = 1
            return True
        return False

    def record(self, ok: bool, now: float, generation: int = -1) -> CircuitState | None:
        """Count one outcome; returns the new state when this outcome changed it.

        ``generation`` is ``self.generation`` as read when the request was admitted
        (-1: don't check). ok=False for 5xx, connect failures and timeouts.
        """
        if generation >= 0 and generation != self.generation:
            return None
        state = self.state
        if state is _CLOSED:
            epoch = int(now // self._width)
            if epoch != self._epoch:
                self._advance(epoch)
            slot = self._epoch % BUCKETS
            if ok:
                self._ok[slot] += 1
                self._ok_total += 1
                return None
            self._fail[slot] += 1
            failures = self._fail_total = self._fail_total + 1
            total = failures + self._ok_total
            config = self.config
            if total >= config.min_requests and failures >= config.error_ratio * total:
                return self._move(BreakerEvent.TRIP, now)
            return None
        if state is _HALF_OPEN:
            if not ok:
                return self._move(BreakerEvent.TRIAL_FAILED, now)
            self.trials_ok += 1
            if self.trials_ok >= self.config.half_open_requests:
                return self._move(BreakerEvent.TRIALS_PASSED, now)
        return None  # OPEN: a straggler admitted before opening; nothing to learn

    def retry_after(self, now: float) -> int:
        """Whole seconds for the 503's ``Retry-After``: until the breaker half-opens, at least 1."""
        if self.state is _OPEN:
            return max(1, math.ceil(self.changed_at + self.config.open_for - now))
        return 1

    @property
    def metric_value(self) -> int:
        """``edge_circuit_state``: 0 closed, 1 open, 2 half-open."""
        return int(self.state)

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) in the window as of ``now``; for status pages and tests."""
        if self.state is _CLOSED:
            epoch = int(now // self._width)
            if epoch > self._epoch:
                self._advance(epoch)
        return self._ok_total, self._fail_total

    # -- internals -----------------------------------------------------------------------
    def _move(self, event: BreakerEvent, now: float) -> CircuitState:
        self.state = state = transition(self.state, event)
        self.generation += 1
        self.changed_at = now
        self.trials_issued = 0
        self.trials_ok = 0
        if state is not _CLOSED:
            self._clear()
        else:
            self._epoch = int(now // self._width)
        return state

    def _advance(self, epoch: int) -> None:
        """Slide the window to ``epoch``, emptying the buckets that fell out of it."""
        if epoch < self._epoch:
            return  # the clock went back (another worker's stamp, a test): keep counting here
        steps = min(BUCKETS, epoch - self._epoch)
        ok = self._ok
        fail = self._fail
        for step in range(1, steps + 1):
            slot = (self._epoch + step) % BUCKETS
            self._ok_total -= ok[slot]
            self._fail_total -= fail[slot]
            ok[slot] = 0
            fail[slot] = 0
        self._epoch = epoch

    def _clear(self) -> None:
        for slot in range(BUCKETS):
            self._ok[slot] = 0
            self._fail[slot] = 0
        self._ok_total = 0
        self._fail_total = 0

    # -- reload and persistence ----------------------------------------------------------
    def export_state(self, now: float) -> dict[str, float]:
        """Plain, clock-independent data: state, seconds left open, window counts."""
        ok, failed = self.counts(now)
        left = 0.0
        if self.state is _OPEN:
            left = max(0.0, self.changed_at + self.config.open_for - now)
        return {"state": float(int(self.state)), "open_left": left, "ok": float(ok), "failed": float(failed)}

    def import_state(self, data: dict[str, float], now: float) -> None:
        """Resume from ``export_state`` (maybe under a changed config).

        OPEN keeps its remaining time (capped at the new ``open_for``); HALF_OPEN resumes
        with fresh trials; CLOSED keeps its window counts, put in the current bucket.
        """
        try:
            state = CircuitState(int(data.get("state", 0)))
        except ValueError:
            state = _CLOSED
        self._clear()
        self.trials_issued = 0
        self.trials_ok = 0
        self.generation += 1
        self.state = state
        self._epoch = int(now // self._width)
        if state is _OPEN:
            left = min(self.config.open_for, max(0.0, float(data.get("open_left", 0.0))))
            self.changed_at = now - (self.config.open_for - left)
        else:
            self.changed_at = now
        if state is _CLOSED:
            slot = self._epoch % BUCKETS
            self._ok[slot] = self._ok_total = max(0, int(data.get("ok", 0)))
            self._fail[slot] = self._fail_total = max(0, int(data.get("failed", 0)))

    def carry_over(self, old: Breaker, now: float) -> None:
        """Reload: continue where the breaker this one replaces left off."""
        self.import_state(old.export_state(now), now)
