"""The benchmark harness: its parsers and templates (fast), and one real smoke run (slow).

The smoke run is ``python -m bench --quick --only edge,haproxy --tests small`` (about 10 s):
it proves the harness starts the origin and the proxies, drives wrk, prints a table that
parses, and that edge served every request without an error. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import peers, report
from bench.procs import StartError, Supervisor, free_ports
from bench.wrk import WrkError, parse_duration_text, parse_wrk
from tests.support.privileged import require_tool

REPO = Path(__file__).resolve().parent.parent

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   620.31us  110.52us   8.91ms   91.20%
    Req/Sec    80.12k     2.01k   84.33k    70.00%
  Latency Distribution
     50%  601.00us
     75%  650.00us
     90%  720.00us
     99%    1.10ms
  801234 requests in 10.00s, 150.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  80123.40
Transfer/sec:     15.02MB
"""


def test_parse_wrk_reads_rps_percentiles_and_errors() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == pytest.approx(80123.40)
    assert result.p50 == pytest.approx(601e-6)
    assert result.p99 == pytest.approx(1.10e-3)
    assert result.requests == 801234
    assert result.non_2xx_3xx == 7
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.errors == 10


def test_parse_wrk_without_errors_and_in_seconds() -> None:
    text = WRK_OUTPUT.replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "")
    text = text.replace("  Non-2xx or 3xx responses: 7\n", "").replace("1.10ms", "1.50s")
    result = parse_wrk(text)
    assert result.errors == 0
    assert result.p99 == pytest.approx(1.5)


def test_parse_wrk_rejects_output_without_latency_distribution() -> None:
    with pytest.raises(WrkError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_is_pointed_at_the_first_plain_listener() -> None:
    policy = """
listeners:
  websecure: {listen: ["127.0.0.1:8443"], tls: {certificates: [{cert: c.pem, key: c.key}]}}
  web: {listen: ["[::]:8080", "127.0.0.1:8081"]}
"""
    assert peers.listen_address(policy) == ("::1", 8080)
    with pytest.raises(ValueError, match="not loopback"):
        peers.listen_address("listeners: {web: {listen: ['192.0.2.1:80']}}")
    with pytest.raises(ValueError, match="only TLS listeners"):
        peers.listen_address("listeners: {s: {listen: ['127.0.0.1:1'], tls: {alpn: [h2]}}}")


@pytest.mark.parametrize(("text", "seconds"), [("10", 10), ("10s", 10), ("1m", 60)])
def test_durations_are_whole_seconds(text: str, seconds: int) -> None:
    assert parse_duration_text(text) == seconds


@pytest.mark.parametrize("text", ["0", "1.5s", "250ms", "soon"])
def test_durations_wrk_cannot_take_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_text(text)


def test_table_round_trips_through_parse_table() -> None:
    rows = [
        report.Row("edge", "small", rps=50000, p50=0.0009, p99=0.0031, errors=0, proxy_cpu=1.0),
        report.Row("haproxy", "small", rps=80000, p50=0.0006, p99=0.0015, errors=0, proxy_cpu=0.8),
        report.Row("caddy", "small", "failed", "failed to start: exited with status 1: boom"),
    ]
    text = report.format_table(rows)
    parsed = {(r["proxy"], r.get("test")): r for r in report.parse_table(text)}
    assert parsed[("edge", "small")]["rps"] == 50000
    assert parsed[("edge", "small")]["ratios"] is None
    assert parsed[("haproxy", "small")]["ratios"] == {"rps": 0.62, "p50": 1.5, "p99": 2.07}
    assert parsed[("caddy", None)]["status"] == "failed"
    assert "caddy: failed to start: exited with status 1: boom" in text
    assert "small    rps  edge/haproxy 0.62 (want >= 0.6)  met" in text


def test_table_flags_rows_not_to_trust() -> None:
    rows = [
        report.Row("edge", "small", rps=50000, p50=0.001, p99=0.002, requests=500000, upstream_connections=400000),
        report.Row("haproxy", "small", rps=20000, p50=0.001, p99=0.002, client_cpu_busy=1.0, proxy_cpu_busy=0.5),
        report.Row("nginx", "small", rps=70000, p50=0.001, p99=0.002, proxy_cpu=0.6, others_cpu=0.3),
    ]
    text = report.format_table(rows)
    assert "new connections to the origin during: edge small (400,000 for 500,000 requests)" in text
    assert "client-bound" in text and "haproxy small" in text
    assert "other processes used the proxy's CPU during: nginx small (30%)" in text
    assert len(report.parse_table(text)) == 3


def test_repeated_rounds_combine_into_medians_and_summed_errors() -> None:
    rounds = [
        report.Row("edge", "small", rps=rps, p50=p50, p99=p99, errors=errors, proxy_cpu=1.0)
        for rps, p50, p99, errors in ((100, 0.001, 0.004, 0), (300, 0.003, 0.002, 1), (200, 0.002, 0.003, 2))
    ]
    row = report.combine(rounds)
    assert (row.rps, row.p50, row.p99, row.errors) == (200, 0.002, 0.003, 3)
    assert [r["rps"] for r in row.runs] == [100, 300, 200]
    rounds[1] = report.Row("edge", "small", "failed", "small: wrk exited 1")
    assert report.combine(rounds).message == "small: wrk exited 1 (round 2 of 3)"


def test_render_fills_braced_placeholders_only_and_rejects_unknown_ones() -> None:
    assert peers.render("listen ${port}; set $host;", {"port": 8080}) == "listen 8080; set $host;"
    with pytest.raises(ValueError, match="origin_prot1"):
        peers.render("server 127.0.0.1:${origin_prot1};", {"origin_port1": 1})


@pytest.mark.parametrize("template", [None, peers.CONFIG_DIR / "edge-all.yaml"], ids=["default", "edge-all"])
def test_generated_edge_policy_is_valid_and_points_wrk_at_its_listener(tmp_path: Path, template: Path | None) -> None:
    from edge.policy import parse_policy

    ports = peers.RunPorts(origin1=20001, origin2=20002, proxies={"edge": 20003}, edge_admin=20004)
    launch = peers.launch_proxy("edge", ports, tmp_path, template)
    policy = parse_policy(launch.files["edge.yaml"], "edge.yaml")
    assert policy is not None
    assert (launch.host, launch.port) == ("127.0.0.1", 20003)
    assert launch.argv[1:3] == ["serve", "-c"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone for our purpose
    except FileNotFoundError:
        return False


def _poll(predicate: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Readiness poll with a deadline (not a timed wait)."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_supervisor_stops_a_child_and_its_workers(tmp_path: Path) -> None:
    out = tmp_path / "group.out"
    with Supervisor(tmp_path, grace_s=2.0) as supervisor:
        child = supervisor.start("group", ["sh", "-c", "sleep 60 & echo $!; wait"])
        _poll(lambda: out.read_text().endswith("\n"))
        worker = int(out.read_text())
        assert _alive(child.process.pid) and _alive(worker)
    assert not _alive(child.process.pid)
    assert not _alive(worker)


def test_supervisor_reports_a_child_that_exits_with_its_output(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with Supervisor(tmp_path) as supervisor:
        child = supervisor.start("broken", ["sh", "-c", "echo 'bad config line 3' >&2; exit 3"])
        with pytest.raises(StartError, match="exited with status 3: bad config line 3"):
            supervisor.wait_ready(child, "127.0.0.1", port, deadline_s=10)


@pytest.mark.slow
def test_quick_bench_run_prints_a_table_and_edge_has_no_errors(tmp_path: Path) -> None:
    require_tool("wrk", "haproxy", "nginx")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "edge,haproxy",
            "--tests",
            "small",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    rows = report.parse_table(done.stdout)
    by_proxy = {r["proxy"]: r for r in rows}
    assert set(by_proxy) == {"edge", "haproxy"}, output
    assert by_proxy["edge"]["status"] == "ok", output
    assert by_proxy["edge"]["errors"] == 0, output
    assert by_proxy["edge"]["rps"] > 0, output
    assert by_proxy["haproxy"]["status"] == "ok", output
    assert by_proxy["haproxy"]["ratios"] is not None, output
    assert done.returncode == 0, output
    written = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert {(r["proxy"], r["test"]) for r in written["rows"]} == {("edge", "small"), ("haproxy", "small")}
