"""Circuit breaker: window, opening, half-open trials, generations, carry-over."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.breaker import _TRANSITIONS, Breaker, BreakerEvent, CircuitState, InvalidTransition, transition
from edge.policy.model import CircuitBreaker
from tests.policy_logic.fakes import FakeClock

MOVES = {(state, after) for (state, _), after in _TRANSITIONS.items()}
CONFIG = CircuitBreaker(error_ratio=0.5, min_requests=20, window=10.0, open_for=30.0, half_open_requests=3)


def feed(breaker: Breaker, clock: FakeClock, ok: int, failed: int, spacing: float = 0.01) -> None:
    for outcome in [True] * ok + [False] * failed:
        assert breaker.allow(clock.now)
        breaker.record(outcome, clock.now)
        clock.advance(spacing)


def open_breaker(clock: FakeClock) -> Breaker:
    breaker = Breaker(CONFIG, clock.now)
    feed(breaker, clock, 10, 10)
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_closed_admits_and_counts() -> None:
    clock = FakeClock()
    breaker = Breaker(CONFIG, clock.now)
    feed(breaker, clock, 15, 4)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.counts(clock.now) == (15, 4)
    assert breaker.metric_value == 0


def test_needs_min_requests_before_opening() -> None:
    clock = FakeClock()
    breaker = Breaker(CONFIG, clock.now)
    feed(breaker, clock, 0, 19)
    assert breaker.state is CircuitState.CLOSED  # 100 % errors, but only 19 requests
    feed(breaker, clock, 0, 1)
    assert breaker.state is CircuitState.OPEN


def test_opens_at_the_error_ratio() -> None:
    clock = FakeClock()
    breaker = Breaker(CONFIG, clock.now)
    feed(breaker, clock, 11, 9)
    assert breaker.state is CircuitState.CLOSED  # 9/20 < 0.5
    feed(breaker, clock, 0, 2)
    assert breaker.state is CircuitState.OPEN  # 11/22 >= 0.5
    assert breaker.metric_value == 1


def test_old_outcomes_slide_out_of_the_window() -> None:
    clock = FakeClock()
    breaker = Breaker(CONFIG, clock.now)
    feed(breaker, clock, 0, 15)
    clock.advance(11.0)  # the failures are older than the 10 s window now
    assert breaker.counts(clock.now) == (0, 0)
    feed(breaker, clock, 15, 5)
    assert breaker.state is CircuitState.CLOSED


def test_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(0.0)
    breaker = Breaker(CONFIG, clock.now)
    for _ in range(10):  # one failure per second
        breaker.record(False, clock.now)
        clock.advance(1.0)
    assert breaker.counts(clock.now) == (0, 9)  # the first second's bucket just slid out
    clock.advance(5.0)
    assert breaker.counts(clock.now) == (0, 4)


def test_open_rejects_until_open_for_then_half_opens() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    assert not breaker.allow(clock.now)
    assert breaker.retry_after(clock.now) == 30
    clock.advance(29.5)
    assert not breaker.allow(clock.now)
    assert breaker.retry_after(clock.now) == 1
    clock.advance(0.5)
    assert breaker.allow(clock.now)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.metric_value == 2


def test_half_open_admits_only_the_trials_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30)
    admitted = [breaker.allow(clock.now) for _ in range(5)]
    assert admitted == [True, True, True, False, False]
    assert breaker.record(True, clock.now) is None
    assert breaker.record(True, clock.now) is None
    assert breaker.record(True, clock.now) is CircuitState.CLOSED
    assert breaker.allow(clock.now)
    assert breaker.counts(clock.now) == (0, 0)  # a fresh window after closing


def test_half_open_reopens_on_a_failure() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30)
    assert breaker.allow(clock.now)
    assert breaker.record(False, clock.now) is CircuitState.OPEN
    assert not breaker.allow(clock.now)
    assert breaker.retry_after(clock.now) == 30


def test_results_from_an_older_generation_are_ignored() -> None:
    clock = FakeClock()
    breaker = Breaker(CONFIG, clock.now)
    slow_generation = breaker.generation  # a slow request admitted while closed
    feed(breaker, clock, 0, 20)
    clock.advance(30)
    assert breaker.allow(clock.now)  # trial one
    trial_generation = breaker.generation
    assert breaker.record(False, clock.now, slow_generation) is None  # the slow one fails late
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.allow(clock.now)
    breaker.allow(clock.now)
    for _ in range(3):
        breaker.record(True, clock.now, trial_generation)
    assert breaker.state is CircuitState.CLOSED


def test_lost_trials_are_re_armed() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(30)
    assert [breaker.allow(clock.now) for _ in range(4)] == [True, True, True, False]
    clock.advance(10)
    assert not breaker.allow(clock.now)
    clock.advance(20)  # the trials never reported back: probe again rather than wedge
    assert breaker.allow(clock.now)
    assert breaker.state is CircuitState.HALF_OPEN


def test_transition_table() -> None:
    assert transition(CircuitState.CLOSED, BreakerEvent.TRIP) is CircuitState.OPEN
    assert transition(CircuitState.OPEN, BreakerEvent.COOLED) is CircuitState.HALF_OPEN
    assert transition(CircuitState.HALF_OPEN, BreakerEvent.TRIAL_FAILED) is CircuitState.OPEN
    assert transition(CircuitState.HALF_OPEN, BreakerEvent.TRIALS_PASSED) is CircuitState.CLOSED
    with pytest.raises(InvalidTransition):
        transition(CircuitState.CLOSED, BreakerEvent.TRIALS_PASSED)
    with pytest.raises(InvalidTransition):
        transition(CircuitState.OPEN, BreakerEvent.TRIP)


def test_export_import_keeps_open_time_left() -> None:
    clock = FakeClock()
    old = open_breaker(clock)
    clock.advance(10)
    state = old.export_state(clock.now)
    assert state["state"] == 1.0 and state["open_left"] == pytest.approx(20.0, abs=0.3)
    other = FakeClock(5.0)  # a restarted process: another clock origin
    new = Breaker(CONFIG, other.now)
    new.import_state(state, other.now)
    assert new.state is CircuitState.OPEN
    assert not new.allow(other.advance(19.0))
    assert new.allow(other.advance(1.5))


def test_carry_over_keeps_the_closed_window() -> None:
    clock = FakeClock()
    old = Breaker(CONFIG, clock.now)
    feed(old, clock, 10, 9)
    new = Breaker(CONFIG, clock.now)
    new.carry_over(old, clock.now)
    assert new.counts(clock.now) == (10, 9)
    new.record(False, clock.now)
    assert new.state is CircuitState.OPEN


def test_import_caps_open_time_at_a_shorter_open_for() -> None:
    clock = FakeClock()
    old = open_breaker(clock)
    new = Breaker(CircuitBreaker(open_for=5.0), clock.now)
    new.carry_over(old, clock.now)
    assert new.retry_after(clock.now) == 5


def test_import_half_open_resumes_with_fresh_trials() -> None:
    new = Breaker(CONFIG, 0.0)
    new.import_state({"state": 2.0}, 0.0)
    assert new.state is CircuitState.HALF_OPEN
    assert [new.allow(0.0) for _ in range(4)] == [True, True, True, False]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=8), st.sampled_from(["ok", "fail", "allow"])),
        max_size=300,
    ),
    half_open=st.integers(1, 4),
    min_requests=st.integers(1, 10),
)
def test_property_breaker_invariants(steps: list, half_open: int, min_requests: int) -> None:
    """Whatever happens: only table moves; never admits while open_for runs; trials bounded."""
    config = CircuitBreaker(
        error_ratio=0.5, min_requests=min_requests, window=10.0, open_for=15.0, half_open_requests=half_open
    )
    breaker = Breaker(config, 0.0)
    now = 0.0
    for dt, action in steps:
        now += dt
        before = breaker.state
        since = breaker.changed_at
        if action == "allow":
            admitted = breaker.allow(now)
            if before is CircuitState.CLOSED:
                assert admitted
            if before is CircuitState.OPEN and now - since < config.open_for:
                assert not admitted
        else:
            breaker.record(action == "ok", now)
        after = breaker.state
        assert after is before or (before, after) in MOVES
        assert breaker.trials_issued <= half_open
        ok, failed = breaker.counts(now)
        assert ok >= 0 and failed >= 0
        if breaker.state is not CircuitState.CLOSED:
            assert (ok, failed) == (0, 0)
