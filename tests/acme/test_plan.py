"""The pure ACME schedule: which hosts, when to renew, how long to back off. No I/O, fixed times."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from edge.acme.plan import (
    CHECK_INTERVAL,
    REISSUE_GAP,
    RENEW_BEFORE,
    RETRY_FIRST,
    RETRY_MAX,
    Event,
    HostState,
    advance,
    hosts_for_listener,
    new_host,
    renew_at,
    retry_delay,
    seconds_until_next,
    wants_order,
)
from edge.policy import parse_policy

NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)

POLICY = """\
version: 1
listeners:
  web: {listen: ["127.0.0.1:8080"]}
  websecure:
    listen: ["127.0.0.1:8443"]
    tls: {acme: {directory: "https://ca.example/dir", storage: /tmp/edge-acme-unused}}
  lan:
    listen: ["127.0.0.1:9443"]
    tls: {acme: {directory: "https://ca.example/dir", storage: /tmp/edge-acme-unused}}
services:
  app: {upstreams: [{url: "http://127.0.0.1:9"}]}
routes:
  - {service: app, host: Cloud.Example.ORG.}
  - {service: app, host: cloud.example.org, path_prefix: /dav}
  - {service: app, host: "*.apps.example.org"}
  - {service: app, host: photos.example.org, listeners: [websecure, web]}
  - {service: app, host: nas.example.org, listeners: [lan]}
  - {service: app, host: bücher.example.org}
  - {service: app, host: 192.168.1.10}
  - {service: app, host: nas}
  - {service: app}
"""


def test_hosts_are_the_route_hosts_of_routes_that_apply_to_the_listener() -> None:
    plan = hosts_for_listener(parse_policy(POLICY), "websecure")
    assert plan.hosts == ("cloud.example.org", "photos.example.org", "xn--bcher-kva.example.org")
    assert [host for host, _ in plan.skipped] == ["*.apps.example.org", "192.168.1.10", "nas"]
    assert "DNS-01" in dict(plan.skipped)["*.apps.example.org"]


def test_a_route_limited_to_another_listener_counts_only_there() -> None:
    plan = hosts_for_listener(parse_policy(POLICY), "lan")
    assert "nas.example.org" in plan.hosts and "photos.example.org" not in plan.hosts


def test_hosts_covered_by_the_policys_own_certificates_are_skipped() -> None:
    plan = hosts_for_listener(parse_policy(POLICY), "websecure", covered=["cloud.example.org", "*.example.org"])
    assert plan.hosts == ()
    assert dict(plan.skipped)["photos.example.org"].startswith("already served")


def test_renewal_starts_30_days_before_expiry() -> None:
    issued = advance(new_host("a.example", NOW), Event.ISSUED, NOW, validity=(NOW, NOW + 90 * DAY))
    assert issued.state is HostState.VALID and issued.last_issued == NOW
    assert renew_at(NOW, NOW + 90 * DAY) == NOW + 60 * DAY
    assert issued.next_check == NOW + CHECK_INTERVAL  # looks again twice a day meanwhile
    later = NOW + 60 * DAY - dt.timedelta(seconds=1)
    assert advance(issued, Event.TICK, later).state is HostState.VALID
    due = advance(issued, Event.TICK, NOW + 60 * DAY)
    assert due.state is HostState.DUE and wants_order(due, NOW + 60 * DAY)


def test_short_lived_certificates_renew_at_half_their_life() -> None:
    assert renew_at(NOW, NOW + 6 * DAY) == NOW + 3 * DAY
    assert renew_at(NOW, NOW + 45 * DAY) == NOW + 22.5 * DAY
    assert renew_at(NOW, NOW + 90 * DAY, renew_before=10 * DAY) == NOW + 80 * DAY


def test_a_certificate_due_at_birth_is_not_ordered_again_at_once() -> None:
    skewed = advance(new_host("a.example", NOW), Event.ISSUED, NOW, validity=(NOW - 90 * DAY, NOW + DAY))
    assert skewed.state is HostState.VALID and skewed.next_check == NOW + REISSUE_GAP
    assert not wants_order(skewed, NOW + REISSUE_GAP - dt.timedelta(seconds=1))


def test_loading_decides_between_missing_valid_and_due() -> None:
    host = new_host("a.example", NOW)
    assert advance(host, Event.LOADED, NOW).state is HostState.MISSING
    assert wants_order(advance(host, Event.LOADED, NOW), NOW)
    assert advance(host, Event.LOADED, NOW, validity=(NOW - DAY, NOW + 80 * DAY)).state is HostState.VALID
    assert advance(host, Event.LOADED, NOW, validity=(NOW - 80 * DAY, NOW + 10 * DAY)).state is HostState.DUE


def test_failures_back_off_and_keep_the_serving_certificate() -> None:
    serving = advance(new_host("a.example", NOW), Event.LOADED, NOW, validity=(NOW - 70 * DAY, NOW + 20 * DAY))
    started = advance(serving, Event.STARTED, NOW)
    assert started.state is HostState.ISSUING and not wants_order(started, NOW)
    failed = advance(started, Event.FAILED, NOW, error="boom")
    assert failed.state is HostState.FAILED and failed.error == "boom" and failed.failures == 1
    assert failed.not_after == serving.not_after
    assert failed.next_check == NOW + RETRY_FIRST
    assert not wants_order(failed, NOW) and wants_order(failed, NOW + RETRY_FIRST)
    again = advance(advance(failed, Event.STARTED, NOW), Event.FAILED, NOW, error="boom")
    assert again.next_check == NOW + 2 * RETRY_FIRST
    ok = advance(again, Event.ISSUED, NOW, validity=(NOW, NOW + 90 * DAY))
    assert ok.failures == 0 and ok.error is None and ok.state is HostState.VALID


@given(st.integers(min_value=1, max_value=10_000))
def test_backoff_grows_and_is_capped(failures: int) -> None:
    delay = retry_delay(failures)
    assert RETRY_FIRST <= delay <= RETRY_MAX
    assert retry_delay(failures + 1) >= delay


def test_the_shell_sleeps_until_the_earliest_check_but_not_on_orders_in_flight() -> None:
    a = advance(new_host("a", NOW), Event.FAILED, NOW, error="x")
    b = advance(new_host("b", NOW), Event.STARTED, NOW)
    assert seconds_until_next([a, b], NOW) == RETRY_FIRST.total_seconds()
    assert seconds_until_next([], NOW) == CHECK_INTERVAL.total_seconds()
    assert seconds_until_next([new_host("c", NOW)], NOW + DAY) == 0.0
    assert RENEW_BEFORE == 30 * DAY
