"""Network namespaces for the controller's privileged tests.

Every change edge makes in these tests happens inside a namespace created here:
``Netns.edge(...)`` runs ``edge`` through ``ip netns exec`` behind a guard that refuses to
run in the root namespace. ``Lab`` builds a router with one veth per zone to a host
namespace; teardown kills the processes in each namespace (only ours: the namespaces
are ours) and deletes them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_counter = itertools.count()

# Runs inside the namespace: refuse unless this process is in the namespace the test
# created (/run/netns/NAME), never the root one; then hand over to the CLI.
_GUARDED_EDGE = (
    "import os, sys\n"
    "expected = os.stat('/run/netns/' + sys.argv[1]).st_ino\n"
    "if os.stat('/proc/self/ns/net').st_ino != expected:\n"
    "    sys.exit('test guard: not inside the test namespace ' + sys.argv[1] + '; refusing to run edge net')\n"
    "from edge.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)

# A TCP listener per port answering "pong NAME" to anything, and a UDP echo.
_LISTENER = textwrap.dedent(
    """
    import socket, sys, threading
    name = sys.argv[1]
    def serve(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(64)
        while True:
            c, _ = s.accept()
            try:
                c.settimeout(2); c.recv(64); c.sendall(b"pong " + name.encode())
            except OSError:
                pass
            finally:
                c.close()
    for p in sys.argv[2:]:
        threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)

# Try TCP connects to many (host, port) at once; print {"host:port": reply-or-null}.
_PROBE = textwrap.dedent(
    """
    import json, socket, sys, concurrent.futures as cf
    timeout = float(sys.argv[1])
    targets = sys.argv[2:]
    def probe(target):
        host, port = target.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as s:
                s.settimeout(timeout); s.sendall(b"ping"); return s.recv(64).decode() or None
        except OSError:
            return None
    with cf.ThreadPoolExecutor(len(targets) or 1) as pool:
        print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
    """
)


def run(*cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def unique(prefix: str) -> str:
    """Short unique names (interface names are at most 15 bytes)."""
    return f"{prefix}{os.getpid() % 10000}x{next(_counter)}"


def await_condition(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        run("ip", "netns", "add", name)
        self.ip("link", "set", "lo", "up")
        self.processes: list[subprocess.Popen] = []

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout, **kw)

    def ip(self, *args: str) -> None:
        self.exec("ip", *args)

    def python(self, code: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.exec(PYTHON, "-c", code, *args, check=check, timeout=timeout, cwd=ROOT)

    def edge(self, *args: str, check: bool = False, timeout: float = 60, env: dict | None = None):
        """``edge ARGS`` inside this namespace (never in the root one)."""
        assert self.name, "no namespace"
        full_env = dict(os.environ, **(env or {}))
        return run(
            "ip",
            "netns",
            "exec",
            self.name,
            PYTHON,
            "-c",
            _GUARDED_EDGE,
            self.name,
            *args,
            check=check,
            timeout=timeout,
            cwd=ROOT,
            env=full_env,
        )

    def spawn_edge(self, *args: str, **kw) -> subprocess.Popen:
        """A long-running ``edge ARGS`` (the daemon) inside this namespace, guarded like ``edge``."""
        return self.spawn(PYTHON, "-c", _GUARDED_EDGE, self.name, *args, **kw)

    def spawn(self, *cmd: str, **kw) -> subprocess.Popen:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd],
            cwd=ROOT,
            text=True,
            stdout=kw.pop("stdout", subprocess.PIPE),
            stderr=kw.pop("stderr", subprocess.PIPE),
            **kw,
        )
        self.processes.append(process)
        return process

    def listen(self, label: str, *ports: int) -> None:
        process = self.spawn(PYTHON, "-c", _LISTENER, label, *map(str, ports), stderr=subprocess.DEVNULL)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"

    def probe(self, targets: list[str], timeout: float = 0.7) -> dict[str, str | None]:
        result = self.python(_PROBE, str(timeout), *targets, timeout=30)
        return json.loads(result.stdout)

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.exec("nft", *args, check=check)

    def edge_table(self) -> str | None:
        result = self.nft("-t", "-s", "list", "table", "inet", "edge", check=False)
        return result.stdout if result.returncode == 0 else None

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # whatever else runs in our namespace (wireguard-go, a confirm watcher) is ours too:
        # SIGTERM first so wireguard-go removes its UAPI socket, then SIGKILL what is left
        for sig in (15, 9):
            pids = run("ip", "netns", "pids", self.name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.monotonic() + 2
            while pids and time.monotonic() < deadline:
                pids = run("ip", "netns", "pids", self.name, check=False).stdout.split()
                time.sleep(0.02)
        run("ip", "netns", "del", self.name, check=False)


def veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    """A veth pair with one end in each namespace (created in ``a``, never in the root one)."""
    a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    a.ip("link", "set", a_name, "up")
    b.ip("link", "set", b_name, "up")


class Lab:
    """A router namespace and one host namespace per zone, joined by veths.

    Zone ``Z`` with subnet ``S`` (a /24 prefix like ``10.0.10``): the router end is named
    ``r<tag><zone>`` (no address: the policy gives it ``S.1/24``), the host has ``S.2/24`` and a
    default route via ``S.1``.
    """

    def __init__(self, zones: dict[str, str]) -> None:
        self.tag = f"{os.getpid() % 1000}{next(_counter)}"
        self.namespaces: list[Netns] = []
        self.router = self._ns("edgr")
        self.router.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.hosts: dict[str, Netns] = {}
        self.subnets = zones
        self.ifname: dict[str, str] = {}
        for zone, subnet in zones.items():
            host = self._ns(f"edgh{zone[:4]}")
            router_if = f"r{self.tag}{zone}"[:15]
            veth(self.router, router_if, host, "eth0")
            host.ip("addr", "add", f"{subnet}.2/24", "dev", "eth0")
            host.ip("route", "add", "default", "via", f"{subnet}.1")
            self.hosts[zone] = host
            self.ifname[zone] = router_if

    def _ns(self, prefix: str) -> Netns:
        ns = Netns(unique(prefix))
        self.namespaces.append(ns)
        return ns

    def host_ip(self, zone: str) -> str:
        return f"{self.subnets[zone]}.2"

    def router_ip(self, zone: str) -> str:
        return f"{self.subnets[zone]}.1"

    def destroy(self) -> None:
        for ns in reversed(self.namespaces):
            ns.destroy()
