"""Process supervision for the benchmark: start pinned, wait for readiness, always clean up.

Owns every child process of a run. Each child is started in its own session (process
group), so stopping it reaches its workers too (nginx master + worker); ``close()`` stops
them all, SIGTERM then SIGKILL after a grace period, and runs from ``__exit__`` on normal
exit, exceptions and Ctrl-C. On Linux a child also gets SIGKILL if the harness itself dies
(PR_SET_PDEATHSIG). Readiness is polled against a deadline, never slept for.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "Child",
    "CpuMeter",
    "StartError",
    "Supervisor",
    "clip",
    "describe_exit",
    "free_ports",
    "get",
    "pinned",
    "session_cpu_seconds",
    "session_members",
]

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process exited or never became ready; the message says why (with its log's tail)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def describe_exit(code: int) -> str:
    """Popen's return code in words: ``exited with status 2`` or ``killed by SIGTERM``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def clip(text: str, limit: int = 400) -> str:
    """One line of at most ``limit`` characters, keeping the start and the end (where errors are)."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    head = limit // 4
    return f"{line[:head]} ... {line[len(line) - (limit - head - 5) :]}"


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """Prefix ``taskset -c CPU`` (None: no pinning)."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports, all held open until all are picked (then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(slots=True)
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def exited(self) -> int | None:
        return self.process.poll()


class Supervisor:
    """Starts children and guarantees they are all stopped when the ``with`` block ends."""

    def __init__(self, run_dir: Path, grace_s: float = 5.0) -> None:
        self.run_dir = run_dir
        self.grace_s = grace_s
        self.children: list[Child] = []

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` in a new session with stdout+stderr to ``RUN_DIR/NAME.out``."""
        log_path = self.run_dir / f"{name}.out"
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=self.run_dir,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            except OSError as exc:
                raise StartError(f"{argv[0]}: {exc.strerror or exc}") from exc
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def wait_ready(
        self,
        child: Child,
        host: str,
        port: int,
        deadline_s: float = 15.0,
        path: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Poll until ``host:port`` accepts (and ``GET path`` answers 200, if given; over TLS with
        ``tls``), or raise StartError."""
        deadline = time.monotonic() + deadline_s
        last_error = "no attempt"
        while time.monotonic() < deadline:
            code = child.exited()
            if code is not None:
                raise StartError(f"{describe_exit(code)}: {child.log_tail() or '(no output)'}")
            try:
                if path is None:
                    with socket.create_connection((host, port), timeout=0.5):
                        return
                status = _get_status(host, port, path, tls)
                if status == 200:
                    return
                last_error = f"GET {path} answered {status}"
            except (OSError, http.client.HTTPException) as exc:
                last_error = f"{host}:{port}: {getattr(exc, 'strerror', None) or exc}"
            time.sleep(0.05)  # poll interval, not a readiness guess
        tail = child.log_tail()
        raise StartError(f"not ready within {deadline_s:g}s ({last_error})" + (f": {tail}" if tail else ""))

    def stop(self, child: Child) -> None:
        """SIGTERM the child's process group, SIGKILL it after the grace period."""
        process = child.process
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while its workers linger: the group gets SIGKILL regardless,
        # and stop() returns only once every member is gone (their ports are free again).
        _signal_group(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + self.grace_s
        try:
            process.wait(self.grace_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
            pass
        while session_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # SIGKILL is delivered; the kernel is tearing the processes down
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        """Stop every child, newest first; never raises, and is not interrupted by a second Ctrl-C."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            for child in reversed(list(self.children)):
                try:
                    self.stop(child)
                except Exception as exc:  # pragma: no cover - best effort cleanup
                    print(f"bench: could not stop {child.name}: {exc}", file=sys.stderr)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


def _proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, fields after "(comm)") of every process: state ppid pgrp session ... utime(11) stime(12)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                yield int(entry.name), handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile


def session_members(session: int) -> list[int]:
    """Pids of the processes of ``session`` that are not yet dead (zombies count as dead)."""
    return [pid for pid, fields in _proc_stats() if int(fields[3]) == session and fields[0] not in (b"Z", b"X")]


def session_cpu_seconds(session: int) -> float:
    """User + system CPU seconds of every live process in ``session`` (a child and its workers)."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in _proc_stats() if int(f[3]) == session)
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How busy some CPUs were between ``start()`` and ``stop()``, from /proc/stat.

    Two fractions per CPU: ``busy`` counts everything but idle and iowait (interrupts and
    softirqs included: loopback traffic is mostly softirq work), ``tasks`` only user, nice and
    system time, which is what processes' own CPU times add up to.
    """

    def __init__(self, cpus: tuple[int, ...]) -> None:
        self.cpus = cpus
        self._start: dict[int, tuple[int, int, int]] = {}

    @staticmethod
    def _read() -> dict[int, tuple[int, int, int]]:
        """cpu -> (busy ticks, task ticks, total ticks)."""
        times = {}
        with open("/proc/stat") as handle:
            for line in handle:
                name, *values = line.split()
                if name.startswith("cpu") and name != "cpu":
                    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
                    total = user + nice + system + idle + iowait + irq + softirq + steal
                    times[int(name[3:])] = (total - idle - iowait, user + nice + system, total)
        return times

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[int, tuple[float, float]]:
        """cpu -> (busy fraction, task fraction) since ``start()``."""
        end = self._read()
        fractions = {}
        for cpu in self.cpus:
            if cpu in self._start and cpu in end:
                d_busy, d_tasks, d_total = (e - s for s, e in zip(self._start[cpu], end[cpu]))
                fractions[cpu] = (d_busy / d_total, d_tasks / d_total) if d_total else (0.0, 0.0)
        return fractions


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def get(port: int, path: str, host: str = "127.0.0.1") -> str:
    """GET ``path`` on a fresh connection; the body as text (raises OSError on failure)."""
    connection = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode("latin-1")
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from exc
    finally:
        connection.close()


def _get_status(host: str, port: int, path: str, tls: ssl.SSLContext | None = None) -> int:
    connection = (
        http.client.HTTPSConnection(host, port, timeout=2.0, context=tls)
        if tls is not None
        else http.client.HTTPConnection(host, port, timeout=2.0)
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
