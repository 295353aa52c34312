"""The policy file: typed, validated, frozen; errors name file, line and dotted key."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from edge.policy import PolicyErrors, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyErrors) as info:
        parse_policy(text, "home.yaml")
    return [str(e) for e in info.value.errors]


def test_spec_example_loads_every_section():
    policy = load_policy(str(ROOT / "policies/example-full.yaml"))
    assert policy.services["nextcloud"].balancer == "least_conn"
    assert policy.rate_limits["per_client"].rate == 10.0
    assert policy.rate_limits["per_client"].ban.for_ == 3600.0
    assert policy.limits.max_header_size == 32 * 1024
    assert policy.quality_profiles["adaptive"].tiers[2].max_rate == 1_000_000
    assert policy.network.zones["prod"].vlan.link_name == "eth1.10"
    assert policy.network.forward[0].from_ == ("mgmt",)
    assert policy.network.forward[0].to == ("any",)
    assert str(policy.network.input[1].ports[2]) == "51820/udp"
    assert policy.network.wireguard["wg0"].peers["nas"].keepalive == 25.0
    # relative paths are resolved against the policy's folder
    assert policy.listeners["websecure"].tls.certificates[0].cert == str(ROOT / "policies/certs/cloud.pem")


def test_demo_policy_is_valid():
    policy = load_policy(str(ROOT / "policies/demo.yaml"))
    assert policy.routes[0].service == "demo"


def test_models_are_frozen():
    policy = parse_policy("version: 1\nlisteners: {web: {listen: '127.0.0.1:1'}}\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.version = 2  # type: ignore[misc]


def test_defaults_are_the_specs():
    policy = parse_policy("version: 1\nlisteners: {web: {listen: '127.0.0.1:1'}}\n")
    assert policy.limits.header_timeout == 10.0
    assert policy.limits.idle_timeout == 60.0
    assert policy.limits.max_body_size is None
    assert policy.workers == 1
    assert policy.access_log.enabled and policy.access_log.path == "-"


def test_unknown_service_names_line_and_suggests():
    text = """version: 1
listeners: {web: {listen: "127.0.0.1:8080"}}
services:
  nextcloud: {upstreams: [{url: "http://10.0.10.20:8080"}]}
routes:
  - host: a.example
    service: nextcloud
  - host: b.example
    service: nextcloud
  - host: c.example
    service: nextcloud
  - host: d.example
    service: nextclod
"""
    expected = "home.yaml:13: routes[3].service: unknown service 'nextclod' (did you mean 'nextcloud'?)"
    assert errors_of(text) == [expected]


def test_every_error_is_reported_with_its_line():
    text = """version: 1
listeners:
  web: {listen: 0.0.0.0:80, redirect_htps: true}
services:
  nc: {upstreams: [{url: "http://a:1"}], balancer: leastconn}
limits: {header_timeout: 10, max_body_size: 3 bananas}
routes:
  - {service: nc, path_prefix: x}
"""
    assert errors_of(text) == [
        "home.yaml:3: listeners.web.redirect_htps: unknown key (did you mean 'redirect_https'?)",
        "home.yaml:5: services.nc.balancer: must be one of round_robin | weighted | least_conn | p2c | hash, "
        "got 'leastconn' (did you mean 'least_conn'?)",
        "home.yaml:6: limits.header_timeout: duration 10 needs a unit (ms, s, m, h, d), e.g. '10s'",
        "home.yaml:6: limits.max_body_size: unknown size unit in '3 bananas' (use B, KiB, MiB, GiB, KB, MB or GB)",
        "home.yaml:8: routes[0].path_prefix: must start with '/', got 'x'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "home.yaml:1: empty policy"),
        ("version: 2\nlisteners: {}\n", "home.yaml:1: version: must be one of 1, got 2"),
        ("listeners: {w: {listen: '1.2.3.4:1'}}\n", "home.yaml:1: version: is required"),
        ("version: 1\n", "a policy needs at least one of 'listeners' or 'network'"),
        ("version: 1\nlisteners: {w: {listen: '::1:80'}}\n", "IPv6 addresses need brackets"),
        ("version: 1\nlisteners: {w: {listen: '1.2.3.4:99999'}}\n", "port 99999 out of range"),
        ("version: 1\nversion: 1\n", "home.yaml:2: version: duplicate key"),
        ("version: 1\nlisteners: [\n", "YAML syntax"),
        ("version: 1\nworkers: -1\nlisteners: {w: {listen: '1.2.3.4:1'}}\n", "workers: expected a positive integer"),
        (
            "version: 1\nlisteners: {w: {listen: '1.2.3.4:1'}}\nservices: {s: {upstreams: [{url: 'ftp://x'}]}}\n",
            "services.s.upstreams[0].url: expected a URL",
        ),
        (
            "version: 1\nlisteners: {w: {listen: '1.2.3.4:1'}}\nservices: {s: {upstreams: []}}\n",
            "services.s.upstreams: needs at least one upstream",
        ),
        (
            "version: 1\nlisteners: {w: {listen: '1.2.3.4:1'}}\n"
            "services: {s: {upstreams: [{url: 'http://x:1'}], fallback: nope}}\n",
            "services.s.fallback: expected stale, none or a service name",
        ),
        (
            "version: 1\nlisteners: {w: {listen: '1.2.3.4:1'}}\n"
            "services: {s: {upstreams: [{url: 'http://x:1'}]}}\nroutes: [{service: s, listeners: [webb]}]\n",
            "routes[0].listeners[0]: unknown listener 'webb'",
        ),
        (
            "version: 1\nlisteners: {w: {listen: '1.2.3.4:1'}}\n"
            "services: {s: {upstreams: [{url: 'http://x:1'}]}}\nroutes: [{service: s, zones: [mgmt]}]\n",
            "routes[0].zones[0]: unknown zone 'mgmt'",
        ),
        (
            "version: 1\nnetwork:\n  zones: {lan: {interfaces: [eth0]}}\n"
            "  forward: [{from: lan, to: wna, action: accept}]\n",
            "home.yaml:4: network.forward[0].to: unknown zone 'wna'",
        ),
        (
            "version: 1\nnetwork:\n  zones: {lan: {vlan: {parent: eth1, id: 5000}}}\n",
            "network.zones.lan.vlan.id: must be 1-4094, got 5000",
        ),
        (
            "version: 1\nadmin: {listen: '0.0.0.0:9901'}\nlisteners: {w: {listen: '1.2.3.4:1'}}\n",
            "admin.listen: a non-loopback admin address needs admin.token_file",
        ),
    ],
)
def test_errors(text, expected):
    found = errors_of(text)
    assert any(expected in e for e in found), found


def test_check_command_ok_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nlisteners: {web: {listen: '127.0.0.1:8080'}}\n")
    result = subprocess.run([sys.executable, "-m", "edge", "check", "-c", str(good)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "ok\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlisteners: {web: {listen: 'nowhere'}}\nroutes: [{service: x}]\n")
    result = subprocess.run([sys.executable, "-m", "edge", "check", "-c", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("bad.yaml:2: listeners.web.listen: expected HOST:PORT")


def test_check_uses_edge_policy_env(tmp_path):
    good = tmp_path / "env.yaml"
    good.write_text("version: 1\nlisteners: {web: {listen: '127.0.0.1:8080'}}\n")
    env = {"EDGE_POLICY": str(good), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "edge", "check"], capture_output=True, text=True, env=env)
    assert result.stdout == "ok\n"


def test_missing_file_is_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge", "check", "-c", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "cannot read" in result.stderr
