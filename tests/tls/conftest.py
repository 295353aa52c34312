"""Fixtures for TLS tests: a throw-away PKI, a uvloop TLS server on 127.0.0.1, openssl s_client.

The server runs on its own uvloop in a background thread, exactly as a listener would use
``TlsTerminator.context``; each connection gets one greeting line naming what was negotiated,
then a clean close, so a client reads until EOF instead of the test sleeping.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from edge.ca import init_ca, issue_leaf
from edge.ca.authority import Authority
from edge.policy.model import Certificate, Tls
from edge.tls import HANDSHAKE_TIMEOUT, TlsTerminator

OPENSSL_TIMEOUT = 10


@dataclass(frozen=True)
class Pki:
    """A CA with leaves for the SNI cases: a default, an exact name, a wildcard, an mTLS client."""

    ca: Authority
    root: Path
    default: Certificate  # default.test
    exact: Certificate  # a.test, 127.0.0.1
    wildcard: Certificate  # *.wild.test
    client: Certificate  # client.test, with clientAuth

    def tls(self, **overrides: Any) -> Tls:
        fields: dict[str, Any] = {"certificates": (self.default, self.exact, self.wildcard)}
        fields.update(overrides)
        return Tls(**fields)


def _leaf(ca: Authority, out: Path, names: list[str], stem: str, client: bool = False) -> Certificate:
    leaf = issue_leaf(ca, names, cert_path=out / f"{stem}.pem", key_path=out / f"{stem}.key", client=client)
    return Certificate(cert=str(leaf.cert_path), key=str(leaf.key_path))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base / "ca")
    return Pki(
        ca=ca,
        root=ca.root_path,
        default=_leaf(ca, base, ["default.test"], "default"),
        exact=_leaf(ca, base, ["a.test", "127.0.0.1"], "a"),
        wildcard=_leaf(ca, base, ["*.wild.test"], "wild"),
        client=_leaf(ca, base, ["client.test"], "client", client=True),
    )


class _Greeter(asyncio.Protocol):
    """Says what the handshake negotiated, then closes (uvloop calls us after the handshake)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        version = ssl_object.version() if ssl_object else None
        transport.write(f"hello alpn={alpn} version={version}\n".encode())
        transport.close()


class LoopThread:
    """A uvloop running in a thread; tests hand it coroutines and callables."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tls-test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop thread, as a listener's SIGHUP handler would."""

        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@dataclass
class Server:
    terminator: TlsTerminator
    port: int
    loop_thread: LoopThread

    def reload(self) -> list:
        return self.loop_thread.call(self.terminator.reload)

    def update(self, tls: Tls) -> list:
        return self.loop_thread.call(lambda: self.terminator.update(tls))


@pytest.fixture
def serve(loop_thread: LoopThread) -> Iterator[Callable[..., Server]]:
    """Start a TLS server for a Tls policy (or a ready terminator); closed after the test."""
    servers: list[asyncio.AbstractServer] = []

    def start(tls: Tls | TlsTerminator, handshake_timeout: float = HANDSHAKE_TIMEOUT, **kwargs: Any) -> Server:
        terminator = tls if isinstance(tls, TlsTerminator) else TlsTerminator(tls, **kwargs)

        async def create() -> asyncio.AbstractServer:
            return await asyncio.get_running_loop().create_server(
                _Greeter, "127.0.0.1", 0, ssl=terminator.context, ssl_handshake_timeout=handshake_timeout
            )

        server = loop_thread.run(create())
        servers.append(server)
        return Server(terminator, server.sockets[0].getsockname()[1], loop_thread)

    yield start

    async def close_all() -> None:
        for server in servers:
            server.close()
            await server.wait_closed()

    loop_thread.run(close_all())


@dataclass(frozen=True)
class Result:
    returncode: int
    out: str

    @property
    def greeted(self) -> bool:
        return "hello alpn=" in self.out


def s_client(port: int, *args: str, servername: str | None = None) -> Result:
    """Run ``openssl s_client`` against 127.0.0.1:port until the server closes; stdout+stderr."""
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof"]
    command += ["-servername", servername] if servername else ["-noservername"]
    proc = subprocess.run([*command, *args], input=b"", capture_output=True, timeout=OPENSSL_TIMEOUT, check=False)
    return Result(proc.returncode, proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace"))
