"""The benchmark run: origin up, proxies up, a load generator against each proxy per test, one table.

Owns the order of a run and the CPU layout: the nginx origin and the load generator (wrk,
h2load or ``bench.handshakes``) share CPU 0, every proxy under test is pinned to CPU 1
(``taskset -c``), one worker/thread each. With ``--https`` every proxy also gets a TLS listener
with the same certificate, and the run starts by showing what each negotiates. All proxies
are started first and the tests interleave them (test by test, proxy by proxy), so slow
drifts of a shared machine hit every proxy alike. A proxy that is missing or fails to
start becomes a row saying so; the others still run. Every process started here is
stopped on the way out (also on Ctrl-C, SIGTERM and exceptions) by ``procs.Supervisor``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from bench import peers, report, tls
from bench.h2load import h2load_argv, parse_h2load
from bench.handshakes import parse_handshakes
from bench.procs import (
    Child,
    CpuMeter,
    StartError,
    Supervisor,
    clip,
    describe_exit,
    free_ports,
    get,
    pinned,
    session_cpu_seconds,
)
from bench.wrk import WrkError, WrkResult, parse_wrk, wrk_argv

__all__ = ["CLIENT_CPU", "PROXY_CPU", "RESULTS_DIR", "Options", "run"]

CLIENT_CPU = 0  # nginx origin + wrk
PROXY_CPU = 1  # the proxy under test
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_DIR = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_RUNTIME = 0, 1


@dataclass(slots=True)
class Options:
    """What to run: the command line's options, plus knobs for tests (start timeout, extra metadata)."""

    duration_s: int = 10
    warmup_s: int = 1
    repeat: int = 1
    proxies: tuple[str, ...] = peers.PROXIES
    tests: tuple[str, ...] = tuple(report.TESTS)
    edge_policy: Path | None = None
    results_dir: Path = RESULTS_DIR
    keep: bool = False
    pin: bool = True
    start_timeout_s: float = 20.0
    https: bool = False  # TLS listeners on every proxy (needed by the TLS tests)
    extra_meta: dict[str, object] = field(default_factory=dict)


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _cpu_layout(want: bool) -> tuple[int | None, int | None]:
    """(client CPU, proxy CPU), or (None, None) when pinning is off or impossible here."""
    if not want:
        return None, None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if {CLIENT_CPU, PROXY_CPU} <= allowed and shutil.which("taskset"):
        return CLIENT_CPU, PROXY_CPU
    _log(f"cannot pin to CPUs {CLIENT_CPU} and {PROXY_CPU} (allowed: {sorted(allowed)}); running unpinned")
    return None, None


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the supervisor's cleanup runs."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_files(run_dir: Path, files: dict[str, str | bytes]) -> None:
    for relative, content in files.items():
        path = run_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(0o644)
    for directory in {(run_dir / r).parent for r in files}:
        directory.chmod(0o755)  # nginx workers may run as nobody


# nginx stub_status: "Active connections: 1 \nserver accepts handled requests\n 10 10 52 \n..."
_STUB_STATUS = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", re.MULTILINE)

_PORT_TAKEN = re.compile(r"address already in use|EADDRINUSE|errno 98", re.IGNORECASE)


def _port_taken(message: str) -> bool:
    """Did a start fail because another process bound the port between our pick and its bind?"""
    return _PORT_TAKEN.search(message) is not None


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _versions(proxies: tuple[str, ...]) -> dict[str, str]:
    commands = {
        "origin": ["nginx", "-v"],
        "nginx": ["nginx", "-v"],
        "haproxy": ["haproxy", "-v"],
        "caddy": ["caddy", "version"],
        "edge": [peers.edge_binary() or "edge", "--version"],
        "wrk": ["wrk", "--version"],
        "h2load": ["h2load", "--version"],
        "openssl": ["openssl", "version"],
    }
    return {
        name: _version(commands[name]) for name in ("origin", "wrk", "h2load", "openssl", *proxies) if name in commands
    }


def _git_commit() -> str:
    return _version(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])


def _access_log_summary(path: Path, upstreams: list[str]) -> dict[str, object]:
    """Lines in edge's access log and how many name each origin address (proof of round robin)."""
    lines = 0
    needles = {u: f'"{u}"'.encode() for u in upstreams}
    counts = dict.fromkeys(upstreams, 0)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.readlines(1 << 22), []):
            lines += len(chunk)
            joined = b"".join(chunk)
            for upstream, needle in needles.items():
                counts[upstream] += joined.count(needle)
    return {"access_log_lines": lines, "access_log_upstreams": counts}


class _Run:
    """The state of one run: where things are, what is up, the rows so far."""

    def __init__(self, options: Options, run_dir: Path, supervisor: Supervisor) -> None:
        self.options = options
        self.run_dir = run_dir
        self.supervisor = supervisor
        self.client_cpu, self.proxy_cpu = _cpu_layout(options.pin)
        names = list(options.proxies)
        ports = free_ports(3 + len(names) * (2 if options.https else 1))
        tls_ports = dict(zip(names, ports[3 + len(names) :])) if options.https else {}
        self.ports = peers.RunPorts(
            ports[0], ports[1], dict(zip(names, ports[3 : 3 + len(names)])), edge_admin=ports[2], tls=tls_ports
        )
        # --https: one certificate for all, the TLS clients' OpenSSL settings, what each negotiated.
        self.tls_files: peers.TlsFiles | None = None
        self.client_conf: Path | None = None
        if options.https:
            self.tls_files = tls.issue(run_dir / "pki")
            self.client_conf = tls.write_client_conf(run_dir / "openssl-client.cnf")
        self.tls_info: dict[str, dict[str, str]] = {}
        self.no_h2: dict[str, str] = {}
        self.up: dict[str, tuple[Child, peers.Launch]] = {}
        self.failed: dict[str, str] = {}
        self.rows: list[report.Row] = []
        self.loadavg_start = os.getloadavg()

    def start_origin(self) -> None:
        for attempt in (1, 2):
            launch = peers.launch_origin(self.ports, self.run_dir)
            _write_files(self.run_dir, launch.files)
            child = self.supervisor.start("origin", pinned(launch.argv, self.client_cpu))
            try:
                for port in (self.ports.origin1, self.ports.origin2):
                    self.supervisor.wait_ready(child, "127.0.0.1", port, self.options.start_timeout_s, path="/64k")
                return
            except StartError as exc:
                self.supervisor.stop(child)
                if attempt == 2 or not _port_taken(str(exc)):
                    raise
                _log("origin: a port was taken meanwhile; retrying on fresh ports")
                origin1, origin2 = free_ports(2)
                self.ports = dataclasses.replace(self.ports, origin1=origin1, origin2=origin2)

    def start_proxy(self, name: str) -> None:
        if peers.binary(name) is None:
            where = "no edge script next to this Python nor on PATH" if name == "edge" else f"no {name} on PATH"
            self.failed[name] = f"skipped: not installed ({where})"
            return
        deadline_s = self.options.start_timeout_s
        for attempt in (1, 2):
            child = None
            try:
                launch = peers.launch_proxy(name, self.ports, self.run_dir, self.options.edge_policy, self.tls_files)
                _write_files(self.run_dir, launch.files)
                child = self.supervisor.start(name, pinned(launch.argv, self.proxy_cpu), launch.env)
                self.supervisor.wait_ready(child, launch.host, launch.port, deadline_s, path="/small")
                if self.tls_files is not None and launch.tls_port is not None:
                    context = tls.client_context(self.tls_files.root)
                    self.supervisor.wait_ready(child, launch.host, launch.tls_port, deadline_s, "/small", context)
            except (StartError, ValueError, OSError) as exc:
                if child is not None:
                    self.supervisor.stop(child)  # a proxy that never got ready must not idle on CPU 1
                if attempt == 1 and _port_taken(str(exc)):
                    _log(f"{name}: a port was taken meanwhile; retrying on fresh ports")
                    port, admin, tls_port = free_ports(3)
                    admin = admin if name == "edge" else self.ports.edge_admin
                    proxies = {**self.ports.proxies, name: port}
                    tls_ports = {**self.ports.tls, name: tls_port} if self.ports.tls else {}
                    self.ports = dataclasses.replace(self.ports, proxies=proxies, edge_admin=admin, tls=tls_ports)
                    continue
                self.failed[name] = f"failed to start: {clip(str(exc))}"
                return
            self.up[name] = (child, launch)
            where = f" and {launch.host}:{launch.tls_port} (TLS)" if launch.tls_port is not None else ""
            _log(f"{name} ready on {launch.host}:{launch.port}{where}")
            return

    def probe_tls(self) -> None:
        """Once per run: what each TLS listener negotiates (s_client), and who answers over HTTP/2."""
        assert self.tls_files is not None and self.client_conf is not None
        for name, (_child, launch) in self.up.items():
            assert launch.tls_port is not None
            info = tls.negotiated(launch.host, launch.tls_port, self.tls_files, self.client_conf)
            if "h2" in self.options.tests:
                why = tls.h2_check(launch.host, launch.tls_port, self.tls_files, self.client_conf)
                info["h2"] = "yes" if why is None else f"no ({why})"
                if why is not None:
                    self.no_h2[name] = why
            self.tls_info[name] = info
            shown = info.get("error") or " ".join(
                f"{k} {info.get(k, '?')}"
                for k in ("version", "cipher", "group", "signature", "alpn", "h2")
                if k in info
            )
            _log(f"{name} TLS: {shown}")

    def _url(self, launch: peers.Launch, test: str) -> str:
        host = f"[{launch.host}]" if ":" in launch.host else launch.host
        path = report.TESTS[test][0]
        if test in report.HTTPS_TESTS:
            return f"https://{host}:{launch.tls_port}{path}"
        return f"http://{host}:{launch.port}{path}"

    def load(self, launch: peers.Launch, test: str, duration_s: int) -> tuple[str, WrkResult]:
        """Run the test's load generator (pinned to the client CPU); its raw output and the parsed result."""
        _path, connections = report.TESTS[test]
        url, tool = self._url(launch, test), report.TOOLS[test]
        env = None
        if test in report.HTTPS_TESTS:
            if self.client_conf is None or launch.tls_port is None:
                raise WrkError(f"{test} needs --https (TLS listeners)")
            env = {**os.environ, **tls.client_env(self.client_conf)}
        log_file = self.run_dir / f"h2load-{launch.name}.log"
        if tool == "wrk":
            argv = wrk_argv(url, connections, duration_s)
        elif tool == "h2load":
            argv = h2load_argv(url, connections, report.H2_STREAMS, duration_s, log_file, tls.CIPHERSUITES, tls.GROUPS)
        else:
            argv = [sys.executable, "-m", "bench.handshakes", "--url", url, f"-c{connections}", f"-d{duration_s}"]
        done = subprocess.run(
            pinned(argv, self.client_cpu),
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
            env=env,
            cwd=REPO_DIR,
        )
        if done.returncode != 0:
            raise WrkError(f"{tool} {describe_exit(done.returncode)}: {clip(done.stderr or done.stdout, 300)}")
        if tool == "wrk":
            return done.stdout, parse_wrk(done.stdout)
        if tool == "h2load":
            try:
                log_text = log_file.read_text()
            finally:
                log_file.unlink(missing_ok=True)  # a line per request: tens of MB over a run
            # h2load prints a progress line per stream it could not send; keep the summary only.
            summary = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("Process Request"))
            return summary, parse_h2load(done.stdout, log_text)
        return done.stdout, parse_handshakes(done.stdout)

    def _died(self, name: str, child: Child, when: str) -> str:
        """Record that a proxy is gone (it is not measured again) and say how, with its last words."""
        tail = clip(child.log_tail(3))
        self.failed[name] = f"{describe_exit(child.exited() or 0)} {when}" + (f": {tail}" if tail else "")
        return self.failed[name]

    def origin_counters(self) -> tuple[int, int] | None:
        """The origin's (accepted connections, requests) so far, from nginx's stub_status."""
        try:
            body = get(self.ports.origin1, "/origin-status")
        except OSError:
            return None
        match = _STUB_STATUS.search(body)
        return (int(match.group(1)), int(match.group(3))) if match else None

    def measure(self, name: str, test: str) -> report.Row:
        child, launch = self.up[name]
        if child.exited() is not None:
            return report.Row(name, test, "failed", self._died(name, child, f"before {test}"))
        origin_before = self.origin_counters()
        pinned_cpus = () if self.client_cpu is None or self.proxy_cpu is None else (self.client_cpu, self.proxy_cpu)
        meter = CpuMeter(pinned_cpus)
        cpu_before, started = session_cpu_seconds(child.process.pid), time.monotonic()
        meter.start()
        try:
            output, result = self.load(launch, test, self.options.duration_s)
        except (WrkError, subprocess.TimeoutExpired, OSError) as exc:
            return report.Row(name, test, "failed", f"{test}: {clip(str(exc), 300)}")
        busy = meter.stop()
        proxy_cpu = (session_cpu_seconds(child.process.pid) - cpu_before) / (time.monotonic() - started)
        origin_after = self.origin_counters()
        origin: tuple[int, int] | None = None
        if origin_before is not None and origin_after is not None:
            # minus the status request's own connection and request
            origin = (origin_after[0] - origin_before[0] - 1, origin_after[1] - origin_before[1] - 1)
        if child.exited() is not None:
            return report.Row(name, test, "failed", self._died(name, child, f"during {test}"))
        detail = dict(result.socket_errors, non_2xx_3xx=result.non_2xx_3xx)
        expected = report.BODY_SIZES[report.TESTS[test][0]]
        # wrk rounds "MB read" to 2 decimals (up to 0.5% off): allow 1% before calling it short.
        # (h2load counts body bytes only, bench.handshakes head and body: the same bound holds.)
        if result.requests and result.bytes_per_request < expected * 0.99:
            message = f"{test}: {result.bytes_per_request:.0f} bytes per response, the body alone is {expected}"
            return report.Row(name, test, "failed", message, wrk_output=output)
        return report.Row(
            name,
            test,
            rps=result.rps,
            p50=result.p50,
            p99=result.p99,
            errors=result.errors,
            requests=result.requests,
            bytes_per_request=result.bytes_per_request,
            detail=detail,
            proxy_cpu=proxy_cpu,
            client_cpu_busy=busy[self.client_cpu][0] if self.client_cpu in busy else None,
            proxy_cpu_busy=busy[self.proxy_cpu][0] if self.proxy_cpu in busy else None,
            others_cpu=max(0.0, busy[self.proxy_cpu][1] - proxy_cpu) if self.proxy_cpu in busy else None,
            wrk_output=output,
            upstream_connections=origin[0] if origin else None,
            origin_requests=origin[1] if origin else None,
        )

    def execute(self) -> None:
        self.start_origin()
        _log(f"origin ready on 127.0.0.1:{self.ports.origin1} and :{self.ports.origin2}")
        for name in self.options.proxies:
            self.start_proxy(name)
        if self.options.https and self.up:
            self.probe_tls()
        if self.options.warmup_s > 0:
            # Keep-alive wrk over TLS when there are TLS tests (warms the TLS paths too), else plain;
            # h2load when h2 is measured, so upstream pools have grown to its 500 streams beforehand.
            tls_tests = any(t in report.HTTPS_TESTS for t in self.options.tests)
            for name, (_child, launch) in self.up.items():
                warmup = "https-small" if tls_tests else "small"
                if "h2" in self.options.tests and name not in self.no_h2:
                    warmup = "h2"
                try:
                    self.load(launch, warmup, self.options.warmup_s)
                except (WrkError, subprocess.TimeoutExpired, OSError) as exc:
                    _log(f"{name}: warm-up failed: {exc}")
        runs: dict[tuple[str, str], list[report.Row]] = {}
        repeat = self.options.repeat
        for round_number in range(1, repeat + 1):
            # Each round starts with another proxy, so no proxy always runs first (or right after one).
            names = list(self.up)
            shift = (round_number - 1) % max(len(names), 1)
            order = names[shift:] + names[:shift]
            for test in self.options.tests:
                for name in order:
                    if name in self.failed:
                        continue  # died earlier in the run
                    if test == "h2" and name in self.no_h2:
                        continue  # does not speak HTTP/2 (yet): a row saying so, not a failure
                    path, connections = report.TESTS[test]
                    which = f", round {round_number}/{repeat}" if repeat > 1 else ""
                    how = f"{report.TOOLS[test]}, GET {path}, {connections} conn"
                    _log(f"{name} {test} ({how}, {self.options.duration_s}s{which})")
                    runs.setdefault((name, test), []).append(self.measure(name, test))
        for test in self.options.tests:
            for name in self.options.proxies:
                if (name, test) in runs:
                    self.rows.append(report.combine(runs[(name, test)]))
                elif test == "h2" and name in self.no_h2 and name not in self.failed:
                    self.rows.append(report.Row(name, test, "skipped", f"h2 not available ({self.no_h2[name]})"))
                else:
                    status = "skipped" if self.failed[name].startswith("skipped") else "failed"
                    self.rows.append(report.Row(name, test, status, self.failed[name]))

    def meta(self, started: datetime) -> dict[str, object]:
        meta: dict[str, object] = {
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "duration_s": self.options.duration_s,
            "warmup_s": self.options.warmup_s,
            "repeat": self.options.repeat,
            "tests": {
                t: {"path": report.TESTS[t][0], "connections": report.TESTS[t][1], "tool": report.TOOLS[t]}
                for t in self.options.tests
            },
            "wrk_threads": 1,
            "https": self.options.https,
            "pinning": {"client_cpu": self.client_cpu, "proxy_cpu": self.proxy_cpu},
            "cpus": os.cpu_count(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": os.getloadavg(),
            "versions": _versions(self.options.proxies),
            **self.options.extra_meta,
        }
        if self.options.https:
            meta["tls"] = {
                "negotiated": self.tls_info,
                "client": {"ciphersuites": tls.CIPHERSUITES, "groups": tls.GROUPS, "openssl_conf": tls.CLIENT_CONF},
                "h2_streams": report.H2_STREAMS,
                "handshakes": "bench.handshakes: a new connection per request, no session offered (full handshakes)",
            }
        if "edge" in self.up:
            meta["edge"] = dict(self.up["edge"][1].notes)
            log_path = Path(str(self.up["edge"][1].notes.get("access_log", "-")))
            if log_path.is_file():
                upstreams = [f"127.0.0.1:{p}" for p in (self.ports.origin1, self.ports.origin2)]
                meta["edge"].update(_access_log_summary(log_path, upstreams))
        return meta


def run(options: Options, out: TextIO = sys.stdout) -> int:
    """Run the benchmark, print the table to ``out``, write JSON (and a PNG); 0 if every proxy ran."""
    tools = ["wrk", "nginx"]
    if options.https:
        tools += ["openssl", "curl"] + (["h2load"] if "h2" in options.tests else [])
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found on PATH (scripts/setup installs it)", file=sys.stderr)
            return EXIT_RUNTIME
    started = datetime.now(UTC)
    run_dir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    run_dir.chmod(0o755)  # nginx workers may run as nobody and must read www/
    meta: dict[str, object] = {}
    try:
        with _sigterm_as_interrupt(), Supervisor(run_dir) as supervisor:
            state = _Run(options, run_dir, supervisor)
            try:
                state.execute()
            except StartError as exc:
                print(f"origin: failed to start: {exc}", file=sys.stderr)
                return EXIT_RUNTIME
            meta = state.meta(started)
        rows = state.rows
    finally:
        if options.keep:
            _log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(report.format_table(rows), file=out, flush=True)
    negotiated = dict(meta.get("tls") or {}).get("negotiated") if isinstance(meta.get("tls"), dict) else None
    if negotiated:
        print("\n" + report.format_tls(negotiated), file=out, flush=True)
    _write_outputs(options, started, meta, rows, out)
    return EXIT_OK if all(r.status != "failed" for r in rows) else EXIT_RUNTIME


def _write_outputs(
    options: Options, started: datetime, meta: dict[str, object], rows: list[report.Row], out: TextIO
) -> None:
    stamp = started.strftime("%Y%m%d-%H%M%S")
    json_path = options.results_dir / f"bench-{stamp}.json"
    report.write_json(json_path, meta, rows)
    lines = [f"results: {json_path}"]
    edge_meta = meta.get("edge")
    if isinstance(edge_meta, dict):
        spread = ", ".join(f"{u}: {n}" for u, n in dict(edge_meta.get("access_log_upstreams") or {}).items())
        where = edge_meta.get("access_log") if options.keep else "a file in the run's temporary directory"
        lines.append(
            f"edge access log: {edge_meta.get('access_log_lines', '?')} lines ({where})"
            + (f"; by upstream {spread}" if spread else "")
        )
    png_path = json_path.with_suffix(".png")
    lines.append(f"plot: {png_path}" if report.write_plot(png_path, rows) else "plot: skipped (no matplotlib)")
    print("\n" + "\n".join(lines), file=out, flush=True)
