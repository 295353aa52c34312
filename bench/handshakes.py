"""Full TLS handshakes per second: one new connection, one full handshake, one request each.

``python -m bench.handshakes --url https://127.0.0.1:PORT/small -c 50 -d 10`` keeps ``-c``
connections in flight; each connects, performs a TLS handshake **without offering a session**
(no ``session=`` is ever passed, so OpenSSL sends no PSK and no session id: the server must do
the full handshake, certificate signature and key exchange included), sends
``GET PATH`` with ``Connection: close``, reads the whole response (``Content-Length``, or to
EOF), and closes. It prints one JSON object: requests completed within the duration, their rate,
latency percentiles (connect to last byte), errors by kind, status classes, bytes, and how many
handshakes the server resumed anyway (must be 0) with the negotiated version, cipher and ALPN.

Why not wrk or h2load: both keep the TLS session of a connection and offer it on the next one
(wrk ``SSL_clear``s and reuses its ``SSL``; measured against nginx's ``$ssl_session_reused``:
99.6% of wrk's and h2load's ``Connection: close`` requests were resumed), so they measure
resumption, not full handshakes. ``openssl s_time -new`` does full handshakes but one at a time
per process, with no latency figures. This client is plain Python on the ``ssl`` module (the
same OpenSSL as the other clients) with a non-blocking ``selectors`` loop; its own cost per
connection is small next to OpenSSL's client side of the handshake, and the harness flags rows
where CPU 0 (this client + the origin) was saturated.

Cipher suite and key-exchange group come from ``OPENSSL_CONF`` (the harness points it at the
client configuration every TLS client of the run uses); Python has no API for TLS 1.3 suites.
Standard library only (and ``bench.wrk``'s result type, for ``parse_handshakes``).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from bench.wrk import WrkError, WrkResult

__all__ = ["main", "parse_handshakes", "run"]

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Conn:
    """One connection's state: connecting -> handshaking -> sending -> reading -> done."""

    __slots__ = ("buffer", "fd", "head_end", "need", "sock", "started", "state", "status", "tls")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # wrap_socket detaches ``sock``; the descriptor stays the same
        self.tls: ssl.SSLSocket | None = None
        self.state = "connect"
        self.started = started
        self.buffer = bytearray()
        self.need = -1  # total bytes of head + body once known; -1: read to EOF
        self.head_end = -1
        self.status = 0


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values) - 1e-9) - 1))  # nearest rank
    return sorted_values[index]


def run(
    url: str, connections: int, duration_s: float, timeout_s: float = 2.0, server_name: str | None = None
) -> dict[str, object]:
    """Drive full handshakes against ``url`` for ``duration_s``; the result as a dict (see module doc)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname is None:
        raise ValueError(f"{url}: expected https://HOST:PORT/PATH")
    host, port = parts.hostname, parts.port or 443
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: edge-bench-handshakes\r\nConnection: close\r\n\r\n"
    ).encode()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # like wrk and h2load: the signature is still checked by TLS itself
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])

    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = {"connect": 0, "handshake": 0, "read": 0, "write": 0, "timeout": 0}
    statuses = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    counts = {"resumed": 0, "bytes": 0}
    negotiated: dict[str, str] = {}
    live: dict[int, _Conn] = {}

    def open_one(now: float) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, now)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            errors["connect"] += 1
            sock.close()
            return
        live[conn.fd] = conn
        selector.register(sock, _WRITE, conn)

    def finish(conn: _Conn, error: str | None, now: float) -> None:
        try:
            selector.unregister(conn.tls or conn.sock)
        except (KeyError, ValueError):
            pass
        live.pop(conn.fd, None)
        if error is None and now <= deadline:
            latencies.append(now - conn.started)
            klass = f"{conn.status // 100}xx"
            statuses[klass if klass in statuses else "other"] += 1
            counts["bytes"] += len(conn.buffer)
        elif error is not None and now <= deadline:
            errors[error] += 1
        (conn.tls or conn.sock).close()

    def want(conn: _Conn, events: int) -> None:
        selector.modify(conn.tls or conn.sock, events, conn)

    def step(conn: _Conn, now: float) -> None:
        if conn.state == "connect":
            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                finish(conn, "connect", now)
                return
            selector.unregister(conn.sock)
            conn.tls = ctx.wrap_socket(conn.sock, server_hostname=server_name, do_handshake_on_connect=False)
            selector.register(conn.tls, _WRITE, conn)
            conn.state = "handshake"
        if conn.state == "handshake":
            assert conn.tls is not None
            try:
                conn.tls.do_handshake()
            except ssl.SSLWantReadError:
                want(conn, _READ)
                return
            except ssl.SSLWantWriteError:
                want(conn, _WRITE)
                return
            except (ssl.SSLError, OSError):
                finish(conn, "handshake", now)
                return
            if conn.tls.session_reused:
                counts["resumed"] += 1
            if not negotiated:
                cipher = conn.tls.cipher()
                negotiated.update(
                    version=conn.tls.version() or "?",
                    cipher=cipher[0] if cipher else "?",
                    alpn=conn.tls.selected_alpn_protocol() or "-",
                )
            conn.state = "send"
        if conn.state == "send":
            assert conn.tls is not None
            try:
                conn.tls.send(request)  # a few dozen bytes: one TLS record, written whole
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                want(conn, _WRITE)
                return
            except OSError:
                finish(conn, "write", now)
                return
            conn.state = "read"
            want(conn, _READ)
            return
        if conn.state == "read":
            assert conn.tls is not None
            while True:
                try:
                    data = conn.tls.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return
                except ssl.SSLZeroReturnError:
                    data = b""
                except OSError:
                    finish(conn, "read", now)
                    return
                if not data:  # EOF: complete only if no length was promised or it arrived
                    done = conn.head_end >= 0 and (conn.need < 0 or len(conn.buffer) >= conn.need)
                    finish(conn, None if done else "read", now)
                    return
                conn.buffer += data
                if conn.head_end < 0:
                    end = conn.buffer.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    conn.head_end = end + 4
                    head = bytes(conn.buffer[: conn.head_end]).decode("latin-1")
                    try:
                        conn.status = int(head.split(" ", 2)[1])
                    except (IndexError, ValueError):
                        finish(conn, "read", now)
                        return
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length" and value.strip().isdigit():
                            conn.need = conn.head_end + int(value.strip())
                if conn.need >= 0 and len(conn.buffer) >= conn.need:
                    finish(conn, None, now)
                    return

    started = time.monotonic()
    deadline = started + duration_s
    now = started
    while now < deadline:
        while len(live) < connections:
            open_one(now)
        for key, _events in selector.select(timeout=0.05):
            now = time.monotonic()
            step(key.data, now)
        now = time.monotonic()
        for conn in [c for c in live.values() if now - c.started > timeout_s]:
            finish(conn, "timeout", now)
    elapsed = time.monotonic() - started
    for conn in list(live.values()):  # in flight at the deadline: neither counted nor an error
        finish(conn, "timeout", deadline + 1)
    selector.close()
    latencies.sort()
    requests = len(latencies)
    return {
        "requests": requests,
        "duration_s": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "errors": errors,
        "status": statuses,
        "bytes": counts["bytes"],
        "resumed": counts["resumed"],
        "negotiated": negotiated,
        "connections": connections,
    }


def parse_handshakes(text: str) -> WrkResult:
    """This client's JSON line -> the same result type as wrk's; a resumed handshake is an error
    of the measurement itself (it cannot happen: no session is ever offered), so it raises."""
    try:
        data = json.loads(text.strip().splitlines()[-1])
        requests, rps, p50, p99 = int(data["requests"]), float(data["rps"]), float(data["p50"]), float(data["p99"])
        errors, status = dict(data["errors"]), dict(data["status"])
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise WrkError(f"bench.handshakes output is not its JSON line ({exc}): {text.strip()[:300]}") from exc
    if data.get("resumed"):
        raise WrkError(f"bench.handshakes: {data['resumed']} handshakes were resumed; the test wants full ones")
    return WrkResult(
        rps=rps,
        p50=p50,
        p99=p99,
        requests=requests,
        bytes_read=int(data.get("bytes", 0)),
        non_2xx_3xx=sum(int(status.get(k, 0)) for k in ("4xx", "5xx", "other")),
        socket_errors={k: int(v) for k, v in errors.items()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handshakes", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="https://HOST:PORT/PATH")
    parser.add_argument("-c", "--connections", type=int, default=50, help="connections in flight (default 50)")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds per connection before it counts as a timeout"
    )
    parser.add_argument("--server-name", default=None, help="SNI to send (default: none, like an IP URL)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.duration <= 0:
        parser.error("--connections and --duration must be positive")
    result = run(args.url, args.connections, args.duration, args.timeout, args.server_name)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
