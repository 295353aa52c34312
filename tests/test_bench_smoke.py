"""The benchmark harness: its parsers and templates (fast), and real smoke runs (slow).

The smoke runs are ``python -m bench --quick --only edge,haproxy --tests small`` and the same
with ``--https --tests https-small`` (about 10 s each): they prove the harness starts the origin
and the proxies (with TLS listeners), drives wrk, prints a table that parses, and that edge
served every request without an error. No timing is asserted. The full-handshake client runs
for real against a small TLS server here (fast): it must never resume a session.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import command, peers, report, tls
from bench.h2load import H2loadError, parse_h2load, percentiles_from_log
from bench.handshakes import parse_handshakes
from bench.handshakes import run as run_handshakes
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
    assert peers.tls_address(policy) == ("127.0.0.1", 8443)
    assert peers.tls_address("listeners: {web: {listen: ['127.0.0.1:1']}}") is None


H2LOAD_OUTPUT = """\
starting benchmark...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Process Request Failure:2

finished in 10.00s, 34752.10 req/s, 4.24MB/s
requests: 347530 total, 347580 started, 347530 done, 347521 succeeded, 9 failed, 4 errored, 1 timeout
status codes: 347517 2xx, 0 3xx, 0 4xx, 4 5xx
traffic: 42.45MB (44512345) total, 34.12MB (35776900) headers (space savings 40.23%), 33.14MB (34752100) data
                     min         max         mean         sd        +/- sd
time for request:      124us     21.38ms     13.14ms      2.56ms    72.35%
"""


def test_parse_h2load_reads_rps_errors_and_percentiles_from_its_log() -> None:
    log = "".join(f"1795328354616290\t200\t{us}\n" for us in range(1, 101))  # 1..100 microseconds
    result = parse_h2load(H2LOAD_OUTPUT, log)
    assert result.rps == pytest.approx(34752.10)
    assert result.requests == 347521
    assert result.non_2xx_3xx == 4
    assert result.socket_errors == {"errored": 4, "timeout": 1, "failed": 0}
    assert result.errors == 9
    assert result.bytes_per_request == pytest.approx(100, rel=0.01)
    assert (result.p50, result.p99) == (pytest.approx(50e-6), pytest.approx(99e-6))
    assert percentiles_from_log("") == (0.0, 0.0, 0)


def test_parse_h2load_refuses_a_run_that_did_not_speak_h2() -> None:
    with pytest.raises(H2loadError, match=r"http/1\.1, not h2"):
        parse_h2load(H2LOAD_OUTPUT.replace("Application protocol: h2", "Application protocol: http/1.1"))
    with pytest.raises(H2loadError):
        parse_h2load("connect to 127.0.0.1:1 failed\n")


def test_parse_handshakes_reads_the_json_line_and_refuses_resumed_sessions() -> None:
    line = json.dumps(
        {
            "requests": 900,
            "rps": 450.0,
            "p50": 0.04,
            "p99": 0.09,
            "bytes": 900 * 240,
            "resumed": 0,
            "errors": {"connect": 1, "handshake": 2, "read": 0, "write": 0, "timeout": 0},
            "status": {"2xx": 897, "3xx": 0, "4xx": 0, "5xx": 3, "other": 0},
        }
    )
    result = parse_handshakes(line + "\n")
    assert (result.rps, result.requests, result.p50, result.p99) == (450.0, 900, 0.04, 0.09)
    assert result.errors == 6
    with pytest.raises(WrkError, match="resumed"):
        parse_handshakes(line.replace('"resumed": 0', '"resumed": 5'))
    with pytest.raises(WrkError):
        parse_handshakes("Traceback (most recent call last):\n")


def test_s_client_output_is_read_for_version_cipher_group_and_alpn() -> None:
    text = """CONNECTED(00000003)
Peer signature type: ECDSA
Server Temp Key: X25519, 253 bits
---
New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256
ALPN protocol: h2
    Verify return code: 0 (ok)
"""
    info = tls.parse_s_client(text)
    assert info == {
        "version": "TLSv1.3",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "group": "X25519",
        "signature": "ECDSA",
        "alpn": "h2",
        "verify": "ok",
    }
    assert "error" in tls.parse_s_client("connect:errno=111\n")


def test_https_templates_are_the_plain_ones_plus_tls_lines() -> None:
    """nginx-https.conf etc. may only add lines to nginx.conf etc. (comments aside), so a tuning of
    the plain config that is not copied over fails here."""
    for plain, https in peers.TEMPLATES.values():

        def lines(name: str) -> list[str]:
            text = (peers.CONFIG_DIR / name).read_text()
            return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]

        extra = list(lines(https))
        for line in lines(plain):
            assert line in extra, f"{https} lacks {line!r} of {plain}"
            extra.remove(line)
        assert extra, f"{https} adds nothing to {plain}"
        assert any("tls" in ln or "ssl" in ln or "protocols" in ln or ln in {"}", "{"} for ln in extra)


@pytest.mark.parametrize("template", [None, peers.CONFIG_DIR / "edge-all.yaml"], ids=["default", "edge-all"])
def test_https_edge_policy_gets_a_tls_listener_with_the_run_certificate(tmp_path: Path, template: Path | None) -> None:
    from edge.policy import parse_policy

    files = tls.issue(tmp_path / "pki")
    ports = peers.RunPorts(20001, 20002, {"edge": 20003}, edge_admin=20004, tls={"edge": 20005})
    launch = peers.launch_proxy("edge", ports, tmp_path, template, files)
    text = launch.files["edge.yaml"]
    assert parse_policy(text, "edge.yaml") is not None
    assert (launch.host, launch.port, launch.tls_port) == ("127.0.0.1", 20003, 20005)
    assert str(files.cert) in text and str(files.key) in text
    assert peers.with_tls_listener(text, {}) == text  # one TLS listener is enough: kept as written
    assert files.pem.read_bytes().count(b"-----BEGIN") >= 2  # HAProxy's crt: certificate and key


@pytest.mark.parametrize("name", ["nginx", "haproxy", "caddy"])
def test_https_peer_configs_render_with_the_tls_listener(tmp_path: Path, name: str) -> None:
    files = peers.TlsFiles(tmp_path / "c.pem", tmp_path / "c.key", tmp_path / "c+k.pem", tmp_path / "root.pem")
    ports = peers.RunPorts(20001, 20002, {name: 20003}, edge_admin=20004, tls={name: 20005})
    launch = peers.launch_proxy(name, ports, tmp_path, None, files)
    (conf,) = launch.files.values()
    assert "20005" in conf and "20003" in conf
    assert str(files.pem if name == "haproxy" else files.cert) in conf
    assert launch.tls_port == 20005
    plain = peers.launch_proxy(name, dataclasses.replace(ports, tls={}), tmp_path)
    assert plain.tls_port is None and "20005" not in next(iter(plain.files.values()))


def test_tls_tests_need_https_and_https_defaults_to_them() -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.selected_tests(parser.parse_args([])) == report.PLAIN_TESTS
    assert command.selected_tests(parser.parse_args(["--https"])) == report.HTTPS_TESTS
    assert command.selected_tests(parser.parse_args(["--https", "--tests", "small,h2"])) == ("small", "h2")
    assert command.options_from(parser.parse_args(["--https", "--quick"])).https
    assert command.run_bench(parser.parse_args(["--tests", "h2"])) == command.EXIT_BAD_INPUT


def test_tls_targets_name_their_peer_and_h2_not_available_is_a_skip() -> None:
    rows = [
        report.Row("edge", "h2", "skipped", "h2 not available (ALPN: server did not agree on a protocol)"),
        report.Row("caddy", "h2", rps=9000, p50=0.01, p99=0.02, proxy_cpu=1.0),
        report.Row("edge", "handshakes", rps=800, p50=0.05, p99=0.1, proxy_cpu=0.5),
        report.Row("haproxy", "handshakes", rps=1000, p50=0.04, p99=0.07, proxy_cpu=0.5),
        report.Row("edge", "https-small", rps=9000, p50=0.004, p99=0.016, proxy_cpu=0.7),
        report.Row("haproxy", "https-small", rps=15000, p50=0.002, p99=0.007, proxy_cpu=0.5),
    ]
    text = report.format_table(rows)
    assert "targets (edge vs haproxy):" in text  # the only peer judged here
    assert "https-small rps  edge/haproxy 0.60 (want >= 0.6)  met" in text
    assert "handshakes  rps  edge/haproxy 0.80 (want >= 0.8)  met" in text
    assert "handshakes  rps/cpu edge/haproxy 0.80 (want >= 0.8)  met" in text
    assert "edge/caddy" not in text  # no edge h2 row: that target is not judged
    parsed = report.parse_table(text)
    assert {"proxy": "edge", "status": "skipped", "message": rows[0].message} in parsed
    assert len([r for r in parsed if r["status"] == "ok"]) == 5


def test_tls_summary_flags_proxies_that_negotiated_differently() -> None:
    same = {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "group": "X25519", "alpn": "h2"}
    text = report.format_tls({"edge": same, "caddy": same})
    assert "edge     TLSv1.3  TLS_AES_128_GCM_SHA256  X25519" in text and "note:" not in text
    text = report.format_tls({"edge": same, "caddy": dict(same, cipher="TLS_AES_256_GCM_SHA384")})
    assert "not comparable" in text


def test_handshake_client_never_resumes_even_when_the_server_offers_it(tmp_path: Path) -> None:
    """A TLS server that issues tickets and keeps a session cache: every handshake still full."""
    files = tls.issue(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    resumed: list[bool] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(4096)
                    resumed.append(conn.session_reused)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"x" * 100)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = run_handshakes(f"https://127.0.0.1:{port}/small", connections=4, duration_s=1.0)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert result["requests"] > 5, result
    assert result["resumed"] == 0 and not any(resumed), result
    assert result["status"]["2xx"] == result["requests"]
    assert result["negotiated"]["version"] == "TLSv1.3"


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


@pytest.mark.slow
def test_quick_https_bench_run_prints_a_table_and_edge_has_no_errors(tmp_path: Path) -> None:
    require_tool("wrk", "haproxy", "nginx", "openssl", "curl")
    argv = ["--https", "--quick", "--only", "edge,haproxy", "--tests", "https-small", "--results-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, capture_output=True, text=True, timeout=180)
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    by_proxy = {r["proxy"]: r for r in report.parse_table(done.stdout)}
    assert set(by_proxy) == {"edge", "haproxy"}, output
    assert by_proxy["edge"]["status"] == "ok" and by_proxy["edge"]["test"] == "https-small", output
    assert by_proxy["edge"]["errors"] == 0 and by_proxy["edge"]["rps"] > 0, output
    assert by_proxy["haproxy"]["status"] == "ok" and by_proxy["haproxy"]["ratios"] is not None, output
    assert "https-small rps  edge/haproxy" in done.stdout, output
    assert done.returncode == 0, output
    written = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    negotiated = written["meta"]["tls"]["negotiated"]
    assert {n: (i["version"], i["cipher"], i["group"]) for n, i in negotiated.items()} == {
        name: ("TLSv1.3", tls.CIPHERSUITES, tls.GROUPS) for name in ("edge", "haproxy")
    }, output
    assert all(i["verify"] == "ok" for i in negotiated.values()), output
