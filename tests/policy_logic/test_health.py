"""Upstream health: active thresholds, passive ejection with cool-down, carry-over."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.health import (
    _TRANSITIONS,
    COOL_DOWN,
    MAX_COOL_DOWN,
    NO_RESPONSE,
    HealthEvent,
    HealthState,
    InvalidTransition,
    ServiceHealth,
    UpstreamHealth,
    check_passed,
    transition,
)
from edge.policy.model import HealthCheck
from tests.policy_logic.fakes import FakeClock, upstreams

CHECK = HealthCheck(path="/status.php", interval=5.0, timeout=2.0, healthy=2, unhealthy=3)
MOVES = {(state, after) for (state, _), after in _TRANSITIONS.items()}


def test_active_thresholds_down_and_up() -> None:
    clock = FakeClock()
    [state] = upstreams(1)
    health = UpstreamHealth(state, CHECK)
    assert state.healthy
    assert health.record_check(False, clock.now) is None
    assert health.record_check(False, clock.now) is None
    assert health.record_check(False, clock.now) is HealthState.DOWN
    assert not state.healthy
    assert health.record_check(True, clock.now) is None
    assert not state.healthy
    assert health.record_check(True, clock.now) is HealthState.UP
    assert state.healthy


def test_a_passed_check_resets_the_failure_run() -> None:
    [state] = upstreams(1)
    health = UpstreamHealth(state, CHECK)
    for ok in [False, False, True, False, False, True]:
        health.record_check(ok, 0.0)
    assert state.healthy


def test_passive_ejection_and_cool_down() -> None:
    clock = FakeClock()
    states = upstreams(1, 1)
    service = ServiceHealth(states, None)
    service.record_response(0, 502, clock.now)
    service.record_response(0, NO_RESPONSE, clock.now)
    assert states[0].healthy
    assert service.record_response(0, 503, clock.now) is HealthState.EJECTED
    assert not states[0].healthy
    clock.advance(COOL_DOWN - 0.1)
    assert service.tick(clock.now) == []
    clock.advance(0.1)
    assert service.tick(clock.now) == [(states[0], HealthState.UP)]
    assert states[0].healthy


def test_success_in_between_resets_the_passive_count() -> None:
    states = upstreams(1, 1)
    service = ServiceHealth(states)
    for status in [500, 500, 200, 500, 500, 404, 500, 500]:
        service.record_response(0, status, 0.0)
    assert states[0].healthy


def test_probation_ejects_again_at_once_and_backs_off() -> None:
    clock = FakeClock()
    states = upstreams(1, 1)
    service = ServiceHealth(states)
    for _ in range(3):
        service.record_response(0, NO_RESPONSE, clock.now)
    clock.advance(COOL_DOWN)
    service.tick(clock.now)
    assert states[0].healthy
    assert service.record_response(0, NO_RESPONSE, clock.now) is HealthState.EJECTED
    clock.advance(COOL_DOWN)
    service.tick(clock.now)
    assert not states[0].healthy  # second cool-down is twice as long
    clock.advance(COOL_DOWN)
    service.tick(clock.now)
    assert states[0].healthy
    service.record_response(0, 200, clock.now)  # a success clears the record
    for _ in range(2):
        service.record_response(0, NO_RESPONSE, clock.now)
    assert states[0].healthy


def test_cool_down_is_capped() -> None:
    clock = FakeClock()
    states = upstreams(1, 1)
    service = ServiceHealth(states)
    for _ in range(3):
        service.record_response(0, NO_RESPONSE, clock.now)
    for _ in range(10):
        clock.advance(MAX_COOL_DOWN)
        service.tick(clock.now)
        assert states[0].healthy
        service.record_response(0, NO_RESPONSE, clock.now)
    assert service.upstreams[0].ejected_until - clock.now == MAX_COOL_DOWN


def test_passive_never_ejects_the_last_healthy_upstream() -> None:
    states = upstreams(1)
    service = ServiceHealth(states)
    for _ in range(10):
        assert service.record_response(0, 500, 0.0) is None
    assert states[0].healthy
    two = upstreams(1, 1)
    service = ServiceHealth(two)
    for _ in range(3):
        service.record_response(0, 500, 0.0)
    for _ in range(5):
        service.record_response(1, 500, 0.0)
    assert not two[0].healthy and two[1].healthy


def test_active_checks_may_take_every_upstream_down() -> None:
    clock = FakeClock()
    states = upstreams(1, 1)
    service = ServiceHealth(states, CHECK)
    for index in range(2):
        for _ in range(3):
            service.record_check(index, False, clock.now)
    assert not service.any_healthy()
    assert service.retry_after(clock.now) == 10  # two passed checks 5 s apart


def test_retry_after_when_all_ejected_or_down_is_the_soonest_return() -> None:
    clock = FakeClock()
    states = upstreams(1, 1)
    service = ServiceHealth(states, CHECK)
    for _ in range(3):
        service.record_response(0, NO_RESPONSE, clock.now)
    for _ in range(3):
        service.record_check(1, False, clock.now)
    clock.advance(2.5)
    assert not service.any_healthy()
    assert service.retry_after(clock.now) == 8  # 7.5 s of cool-down left, rounded up


def test_failed_checks_during_ejection_take_it_down() -> None:
    states = upstreams(1, 1)
    service = ServiceHealth(states, CHECK)
    for _ in range(3):
        service.record_response(0, 500, 0.0)
    for _ in range(3):
        service.record_check(0, False, 1.0)
    assert service.upstreams[0].state is HealthState.DOWN
    service.tick(100.0)
    assert not states[0].healthy  # the cool-down ending does not bring a DOWN upstream back


def test_check_passed() -> None:
    assert check_passed(200) and check_passed(302)
    assert not check_passed(404) and not check_passed(500) and not check_passed(0)


def test_transition_table() -> None:
    assert transition(HealthState.UP, HealthEvent.CHECKS_FAILED) is HealthState.DOWN
    with pytest.raises(InvalidTransition):
        transition(HealthState.DOWN, HealthEvent.REQUESTS_FAILED)


def test_carry_over_by_label() -> None:
    clock = FakeClock()
    old_states = upstreams(1, 1, 1)
    old = ServiceHealth(old_states, CHECK)
    for _ in range(3):
        old.record_check(0, False, clock.now)  # 8080 down
        old.record_response(1, NO_RESPONSE, clock.now)  # 8081 ejected
    clock.advance(4.0)
    # the reload drops 8082 and adds 8083; 8080 and 8081 stay
    new_states = upstreams(1, 1, 1)
    new_states[2] = upstreams(1, base_port=8083)[0]
    new = ServiceHealth(new_states, CHECK)
    new.carry_over(old, clock.now)
    assert [s.healthy for s in new_states] == [False, False, True]
    clock.advance(6.0)
    new.tick(clock.now)
    assert new_states[1].healthy


def test_import_without_checks_does_not_keep_an_upstream_down_forever() -> None:
    [state] = upstreams(1)
    health = UpstreamHealth(state, None)
    health.import_state({"state": "down"}, 0.0)
    assert state.healthy


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=30),
            st.integers(0, 2),
            st.sampled_from(["check_ok", "check_fail", "ok", "fail", "tick"]),
        ),
        max_size=200,
    )
)
def test_property_health_invariants(events: list) -> None:
    """Only table moves; `healthy` mirrors the state; passive ejection keeps one upstream."""
    states = upstreams(1, 1, 1)
    service = ServiceHealth(states, CHECK)
    now = 0.0
    for dt, index, action in events:
        now += dt
        before = [h.state for h in service.upstreams]
        active_down = any(h.state is HealthState.DOWN for h in service.upstreams)
        if action == "check_ok":
            service.record_check(index, True, now)
        elif action == "check_fail":
            service.record_check(index, False, now)
        elif action == "ok":
            service.record_response(index, 200, now)
        elif action == "fail":
            service.record_response(index, 502, now)
        else:
            service.tick(now)
        for old, health, state in zip(before, service.upstreams, states):
            assert health.state is old or (old, health.state) in MOVES
            assert state.healthy is (health.state is HealthState.UP)
        if not active_down and all(h.state is not HealthState.DOWN for h in service.upstreams):
            assert service.any_healthy()
