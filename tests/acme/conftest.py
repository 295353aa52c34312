"""Pebble on loopback with a one-answer DNS server, and edge's own listeners as the validation target.

Pebble (Debian package ``pebble``) is a real ACME server: it validates HTTP-01 by fetching
``http://HOST:httpPort/.well-known/acme-challenge/TOKEN`` and TLS-ALPN-01 by a handshake to
``HOST:tlsPort`` with ALPN ``acme-tls/1``. Its resolver is ``LoopbackDns`` below, which answers
127.0.0.1 for every name, so any test host name reaches edge on loopback and nothing else.
Pebble's own HTTPS uses a certificate from ``edge.ca`` (its root is the tests' ``ca_bundle``).

One Pebble serves the whole session, with ``httpPort``/``tlsPort`` fixed to two free ports that
each test's edge ``Server`` listens on. ``PEBBLE_AUTHZREUSE=0`` makes every order validate again
(renewals included), ``PEBBLE_VA_NOSLEEP=1`` validates at once.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.ca import ensure_demo_pki
from tests.support.privileged import require_tool
from tests.support.procs import Proc, free_port, port_open, wait_until


class LoopbackDns:
    """A UDP DNS server answering A 127.0.0.1 for every name and nothing for other types."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.names: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            answer = self.answer(query)
            if answer is not None:
                self.sock.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        end, labels = 12, []
        while end < len(query) and query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode("ascii", "replace"))
            end += 1 + query[end]
        end += 1
        if end + 4 > len(query):
            return None
        qtype, _ = struct.unpack("!HH", query[end : end + 4])
        question = query[12 : end + 4]
        self.names.append(".".join(labels).lower())
        records = b""
        if qtype == 1:  # A
            records = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
        header = struct.pack("!HHHHHH", ident, 0x8400 | (flags & 0x0100), 1, 1 if records else 0, 0, 0)
        return header + question + records

    def close(self) -> None:
        self.sock.close()


@dataclass
class Pebble:
    directory: str  # the ACME directory URL
    ca_bundle: Path  # trusts Pebble's HTTPS (its certificate is from edge.ca)
    http_port: int  # where Pebble validates HTTP-01: edge's plain listener
    tls_port: int  # where Pebble validates TLS-ALPN-01: edge's TLS listener
    management: str  # https://127.0.0.1:PORT
    proc: Proc
    dns: LoopbackDns

    def issuing_root(self) -> bytes:
        """PEM of the root Pebble signs with (made fresh each run)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=ctx, timeout=10) as response:
            return response.read()


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    require_tool("pebble")
    base = tmp_path_factory.mktemp("pebble")
    cert, key, root = ensure_demo_pki(base / "pki", ("localhost", "127.0.0.1"))
    port, management_port = free_port(), free_port()
    http_port, tls_port = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    config_path = base / "pebble.json"
    config_path.write_text(json.dumps(config))
    dns = LoopbackDns()
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    proc = Proc(["pebble", "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns.port}"], "pebble", env=env)
    try:
        wait_until(lambda: port_open(port) or proc.proc.poll() is not None, timeout=20, what="pebble")
        if proc.proc.poll() is not None:
            raise RuntimeError(f"pebble exited {proc.proc.returncode}: {proc.stdout()}{proc.stderr()}")
        wait_until(lambda: port_open(management_port), timeout=20, what="pebble management")
        yield Pebble(f"https://127.0.0.1:{port}/dir", root, http_port, tls_port,
                     f"https://127.0.0.1:{management_port}", proc, dns)
    finally:
        proc.stop()
        dns.close()


def mode(path: Path | str) -> int:
    return os.stat(path).st_mode & 0o777
