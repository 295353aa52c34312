"""ACME end to end against Pebble: edge's own listeners answer, Pebble really validates.

Each test runs a real ``edge.serve.server.Server`` (plain listener on Pebble's ``httpPort``, TLS
listener on its ``tlsPort``) on a uvloop in a worker thread, with an ``AcmeManager`` wired the
way ``edge serve`` wires it: ``server.acme_http01`` for HTTP-01, the listener's
``TlsTerminator`` for TLS-ALPN-01, and ``on_certificate`` feeding the issued files to the
terminator. Success is checked with a TLS handshake verified against Pebble's issuing root.
Time moves by a fake clock given to the manager, never by sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509

from edge.acme import AcmeManager, AcmeStatus, HostState
from edge.acme.plan import RETRY_FIRST
from edge.ca import init_ca
from edge.policy import parse_policy
from edge.serve.server import Server
from tests.acme.conftest import Pebble, mode

pytestmark = pytest.mark.slow

SCENARIO_TIMEOUT = 60.0  # one scenario: a few orders at ~2 s each against Pebble


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``scenario`` on a fresh uvloop in a worker thread (so edge installs no signal handlers
    in the test process) and return its result or raise its exception."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                outcome["value"] = runner.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))
        except BaseException as exc:  # re-raised in the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(SCENARIO_TIMEOUT + 15)
    if thread.is_alive():
        raise TimeoutError("scenario did not finish")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@dataclass
class FakeClock:
    """Real time plus an offset the test moves forward."""

    offset: dt.timedelta = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


class ServedDict(dict):
    """The HTTP-01 answers, except that while ``broken`` writes are dropped (a lost answer)."""

    broken = False

    def __setitem__(self, key: str, value: bytes) -> None:
        if not self.broken:
            super().__setitem__(key, value)


@dataclass
class Stack:
    server: Server
    manager: AcmeManager
    pebble: Pebble
    storage: Path
    access_log: Path
    delivered: list[tuple[str, Path, Path]] = field(default_factory=list)

    async def until(self, predicate: Callable[[AcmeStatus], bool], what: str) -> AcmeStatus:
        try:
            return await asyncio.wait_for(self.manager.wait_until(predicate), 40)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.manager.status()}") from None

    async def host_state(self, host: str, state: HostState, failures: int | None = None) -> AcmeStatus:
        def reached(s: AcmeStatus) -> bool:
            h = s.host(host)
            return h is not None and h.state is state and (failures is None or h.failures == failures)

        return await self.until(reached, f"{host} {state.value}")

    async def served_certificate(self, host: str) -> x509.Certificate:
        """Handshake with the TLS listener as a browser would, trusting only Pebble's root."""
        root = await asyncio.get_running_loop().run_in_executor(None, self.pebble.issuing_root)
        ctx = ssl.create_default_context(cadata=root.decode())
        _, writer = await asyncio.open_connection("127.0.0.1", self.pebble.tls_port, ssl=ctx,
                                                  server_hostname=host)
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
        return x509.load_der_x509_certificate(der)


POLICY = """\
version: 1
access_log: {{path: "{access_log}"}}
listeners:
  web: {{listen: ["127.0.0.1:{http_port}"]}}
  websecure:
    listen: ["127.0.0.1:{tls_port}"]
    tls:
      acme:
        directory: "{directory}"
        storage: "{storage}"
        email: admin@example.org
        challenge: {challenge}
        ca_bundle: "{ca_bundle}"
services:
  app: {{upstreams: [{{url: "http://127.0.0.1:9"}}]}}
routes:
  - {{service: app, host: {host}}}
  - {{service: app, host: "*.wild.acme.test"}}
  - {{service: app, host: plain-only.acme.test, listeners: [web]}}
"""


@asynccontextmanager
async def edge_with_acme(
    pebble: Pebble,
    tmp_path: Path,
    host: str,
    *,
    challenge: str = "http-01",
    ca_bundle: Path | None = None,
    clock: FakeClock | None = None,
    http01: dict[str, bytes] | None = None,
    storage: Path | None = None,
) -> AsyncIterator[Stack]:
    storage = storage or tmp_path / "acme"
    access_log = tmp_path / "access.log"
    policy = parse_policy(POLICY.format(
        access_log=access_log, http_port=pebble.http_port, tls_port=pebble.tls_port, directory=pebble.directory,
        storage=storage, challenge=challenge, ca_bundle=ca_bundle or pebble.ca_bundle, host=host,
    ))
    server = Server(policy, asyncio.get_running_loop())
    server.manage_acme = False  # this harness wires its own manager (with a fake clock) the way serve does
    if http01 is not None:
        server.acme_http01 = http01
    await server.start()
    terminator = server.terminators["websecure"]
    delivered: list[tuple[str, Path, Path]] = []

    def on_certificate(name: str, cert: Path, key: Path) -> None:  # what edge serve does
        delivered.append((name, cert, key))
        errors = terminator.update(manager.serving_tls())
        assert not errors, errors

    manager = AcmeManager.for_listener(policy, "websecure", server.acme_http01, terminator,
                                       on_certificate=on_certificate, clock=clock or FakeClock())
    try:
        await manager.start()
        yield Stack(server, manager, pebble, storage, access_log, delivered)
    finally:
        await manager.stop()
        await server.stop(timeout=1)


def test_http01_issues_a_certificate_the_tls_listener_serves(pebble: Pebble, tmp_path: Path) -> None:
    host = "www.http01.acme.test"

    async def scenario() -> tuple[x509.Certificate, AcmeStatus, Stack]:
        async with edge_with_acme(pebble, tmp_path, host) as stack:
            status = await stack.host_state(host, HostState.VALID)
            served = await stack.served_certificate(host)
            assert stack.server.acme_http01 == {}  # answers withdrawn after validation
            return served, status, stack

    served, status, stack = run(scenario)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [host]
    assert [d[0] for d in stack.delivered] == [host]
    assert status.account and status.account.startswith("https://127.0.0.1:")
    assert status.host(host).not_after == served.not_valid_after_utc
    # only the route host of this listener: the wildcard is skipped, the plain-only route ignored
    assert [h.host for h in status.hosts] == [host]
    assert [s[0] for s in status.skipped] == ["*.wild.acme.test"]
    # Pebble fetched the answer from edge's plain listener (the access log has its request)
    log = stack.access_log.read_text()
    assert "/.well-known/acme-challenge/" in log and "200" in log


def test_tls_alpn01_is_answered_on_the_tls_listener(pebble: Pebble, tmp_path: Path) -> None:
    host = "www.alpn.acme.test"

    async def scenario() -> tuple[x509.Certificate, Stack]:
        async with edge_with_acme(pebble, tmp_path, host, challenge="tls-alpn-01") as stack:
            await stack.host_state(host, HostState.VALID)
            return await stack.served_certificate(host), stack

    served, stack = run(scenario)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [host]
    # the HTTP-01 path was not used: nothing asked the plain listener for a challenge
    assert "acme-challenge" not in (stack.access_log.read_text() if stack.access_log.exists() else "")
    assert not list((stack.storage / "challenges").iterdir())  # validation cert files removed


def test_renewal_replaces_the_served_certificate_when_30_days_remain(pebble: Pebble, tmp_path: Path) -> None:
    host = "renew.acme.test"
    clock = FakeClock()

    async def scenario() -> tuple[x509.Certificate, x509.Certificate, Stack]:
        async with edge_with_acme(pebble, tmp_path, host, clock=clock) as stack:
            first_status = await stack.host_state(host, HostState.VALID)
            first = await stack.served_certificate(host)
            not_after = first_status.host(host).not_after
            # 29 days before expiry: due, renewed in the background
            clock.offset = (not_after - dt.timedelta(days=29)) - dt.datetime.now(dt.UTC)
            stack.manager.wake()
            await stack.until(lambda s: s.host(host).last_issued is not None
                              and s.host(host).last_issued > first_status.host(host).last_issued
                              and s.host(host).state is HostState.VALID, "renewal")
            return first, await stack.served_certificate(host), stack

    first, second, stack = run(scenario)
    assert second.serial_number != first.serial_number
    assert [d[0] for d in stack.delivered] == [host, host]


def test_storage_is_owner_only_and_survives_a_restart(pebble: Pebble, tmp_path: Path) -> None:
    host = "store.acme.test"
    storage = tmp_path / "acme"
    storage.mkdir(mode=0o755)  # a pre-made, too wide directory gets tightened

    async def first_run() -> None:
        async with edge_with_acme(pebble, tmp_path, host, storage=storage) as stack:
            await stack.host_state(host, HostState.VALID)

    run(first_run)
    assert mode(storage) == 0o700 and mode(storage / "certs") == 0o700
    files = [storage / "account.key", storage / "account.json", storage / "certs" / f"{host}.pem",
             storage / "certs" / f"{host}.key", storage / "certs" / f"{host}.json"]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}

    # a restart serves the stored certificate at once, without an order
    async def second_run() -> tuple[x509.Certificate, AcmeStatus, int]:
        async with edge_with_acme(pebble, tmp_path, host, storage=storage) as stack:
            status = stack.manager.status()
            return await stack.served_certificate(host), status, len(stack.delivered)

    served, status, delivered = run(second_run)
    assert status.host(host).state is HostState.VALID and status.host(host).last_issued is None
    assert delivered == 1
    assert served.not_valid_after_utc == status.host(host).not_after


def test_failed_validation_is_logged_retried_with_backoff_and_never_stops_the_proxy(
    pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = "flaky.acme.test"
    clock = FakeClock()
    answers = ServedDict()
    answers.broken = True

    async def scenario() -> tuple[AcmeStatus, dt.timedelta, AcmeStatus, int]:
        async with edge_with_acme(pebble, tmp_path, host, clock=clock, http01=answers) as stack:
            failed = await stack.host_state(host, HostState.FAILED, failures=1)
            retry_in = failed.host(host).next_check - clock()
            # the proxy still answers on both listeners' loop
            reader, writer = await asyncio.open_connection("127.0.0.1", pebble.http_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
            status_line = await reader.readline()
            writer.close()
            assert status_line.startswith(b"HTTP/1.1 ")
            # nothing happens before the backoff has passed ...
            answers.broken = False
            stack.manager.wake()
            for _ in range(10):
                await asyncio.sleep(0)
            assert stack.manager.status().host(host).state is HostState.FAILED
            # ... and after it, the retry succeeds
            clock.offset += RETRY_FIRST + dt.timedelta(seconds=1)
            stack.manager.wake()
            done = await stack.host_state(host, HostState.VALID)
            return failed, retry_in, done, len(stack.delivered)

    with caplog.at_level("ERROR", logger="edge.acme"):
        failed, retry_in, done, delivered = run(scenario)
    h = failed.host(host)
    assert h.error and "http-01" in h.error and host in h.error
    assert RETRY_FIRST - dt.timedelta(seconds=30) < retry_in <= RETRY_FIRST
    assert any(host in r.getMessage() and "attempt 1" in r.getMessage() for r in caplog.records)
    assert done.host(host).failures == 0 and done.host(host).error is None
    assert delivered == 1


def test_ca_bundle_decides_whether_the_directory_is_trusted(pebble: Pebble, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other-ca")  # a CA that did not sign Pebble's certificate
    host = "bundle.acme.test"

    async def scenario() -> AcmeStatus:
        async with edge_with_acme(pebble, tmp_path, host, ca_bundle=other.root_path) as stack:
            return await stack.host_state(host, HostState.FAILED, failures=1)

    status = run(scenario)
    error = status.host(host).error or ""
    assert "CERTIFICATE_VERIFY_FAILED" in error or "certificate verify failed" in error, error
    assert status.account is None


def test_a_reload_adds_hosts_and_stop_withdraws_answers_in_flight(pebble: Pebble, tmp_path: Path) -> None:
    first, added = "one.reload.acme.test", "two.reload.acme.test"

    async def scenario() -> tuple[AcmeStatus, dict[str, bytes], Stack]:
        async with edge_with_acme(pebble, tmp_path, first) as stack:
            await stack.host_state(first, HostState.VALID)
            policy = parse_policy(POLICY.format(
                access_log=stack.access_log, http_port=pebble.http_port, tls_port=pebble.tls_port,
                directory=pebble.directory, storage=stack.storage, challenge="http-01", ca_bundle=pebble.ca_bundle,
                host=first,
            ).replace("routes:\n", f"routes:\n  - {{service: app, host: {added}}}\n"))
            stack.manager.update_policy(policy)
            status = await stack.host_state(added, HostState.VALID)
            assert (await stack.served_certificate(added)).not_valid_after_utc == status.host(added).not_after
            # a third host: stop while its order is in flight
            third = "three.reload.acme.test"
            stack.manager.update_hosts([first, added, third])
            await stack.host_state(third, HostState.ISSUING)
            await stack.manager.stop()
            return status, dict(stack.server.acme_http01), stack

    status, answers_after_stop, stack = run(scenario)
    assert [h.host for h in status.hosts] == ["two.reload.acme.test", "one.reload.acme.test"]
    assert answers_after_stop == {}
    assert sorted(d[0] for d in stack.delivered) == [first, added]
