"""The ACME shell for one TLS listener: load stored certificates, issue, renew, retry, report.

``AcmeManager`` runs one asyncio task per listener. The task asks the pure schedule
(``edge.acme.plan``) what is due, runs each blocking ``acme`` call in a worker thread through
``loop.run_in_executor`` (so the event loop, and every request on it, never waits for the CA),
places and removes challenge answers on the loop thread, and hands each new certificate to
``on_certificate``. Hosts are issued one at a time, one certificate per host.

Invariants:
- the proxy never crashes because of ACME: every failure becomes a FAILED host with the reason
  logged and a retry scheduled with backoff; only cancellation (``stop``) ends the task;
- a challenge answer exists only while its validation runs (removed in ``finally``, also on stop);
- everything the shell mutates (the HTTP-01 dict, terminator overrides, statuses) is touched on
  the loop thread only; the worker thread only talks to the CA and the storage directory.

Knows nothing of sockets or HTTP: the plain listeners read the HTTP-01 dict, the TLS listener's
``TlsTerminator`` serves the TLS-ALPN-01 override, and the owner of the listener decides how an
issued certificate is loaded (``on_certificate``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization

from edge.acme.challenge import ACME_TLS_ALPN, HTTP01, TLS_ALPN01, validation_certificate
from edge.acme.client import AcmeClient, AcmeFailure, Task, deadline_after, describe
from edge.acme.plan import (
    RENEW_BEFORE,
    Event,
    HostState,
    HostStatus,
    advance,
    hosts_for_listener,
    new_host,
    seconds_until_next,
    wants_order,
)
from edge.acme.storage import Storage, StorageError, StoredCertificate, key_pem, new_key, write_private
from edge.policy.model import Certificate, Policy, Tls
from edge.tls import TlsSettings, TlsTerminator, server_context

log = logging.getLogger("edge.acme")

T = TypeVar("T")
CertificateCallback = Callable[[str, Path, Path], None]
Clock = Callable[[], dt.datetime]

# After an unexpected error in the loop itself (a bug), wait this long before going on.
_LOOP_ERROR_PAUSE = 60.0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _DaemonThreads(concurrent.futures.Executor):
    """An executor whose threads never hold up interpreter exit.

    A call to an unresponsive CA can block for ``NETWORK_TIMEOUT``; after ``stop`` nobody waits
    for its answer, and ``edge serve`` must exit on SIGTERM without waiting for it either
    (``ThreadPoolExecutor`` threads are joined at exit). The manager submits one call at a time.
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)

        threading.Thread(target=run, name="edge-acme", daemon=True).start()
        return future


@dataclass(frozen=True, slots=True)
class AcmeStatus:
    """What ``status()`` reports: for the admin API, metrics and tests."""

    listener: str
    directory: str
    challenge: str
    account: str | None
    hosts: tuple[HostStatus, ...]
    skipped: tuple[tuple[str, str], ...]

    def host(self, name: str) -> HostStatus | None:
        return next((h for h in self.hosts if h.host == name), None)

    def as_dict(self) -> dict[str, Any]:
        def when(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "listener": self.listener,
            "directory": self.directory,
            "challenge": self.challenge,
            "account": self.account,
            "hosts": [
                {"host": h.host, "state": h.state.value, "not_after": when(h.not_after),
                 "next_check": when(h.next_check), "failures": h.failures, "error": h.error}
                for h in self.hosts
            ],
            "skipped": [{"host": host, "reason": reason} for host, reason in self.skipped],
        }


class AcmeManager:
    """Issues and renews certificates for one TLS listener's hosts with ``tls.acme``.

    ::

        manager = AcmeManager.for_listener(policy, "websecure", server.acme_http01,
                                           terminator, on_certificate=callback)
        await manager.start()   # reads storage, calls on_certificate for stored certificates
        ...
        manager.update_policy(new_policy)   # SIGHUP with the same tls.acme
        await manager.stop()
    """

    def __init__(
        self,
        listener: str,
        tls: Tls,
        hosts: Iterable[str],
        http01: dict[str, bytes],
        terminator: TlsTerminator | None = None,
        *,
        on_certificate: CertificateCallback | None = None,
        skipped: Iterable[tuple[str, str]] = (),
        renew_before: dt.timedelta = RENEW_BEFORE,
        clock: Clock = _utcnow,
    ) -> None:
        if tls.acme is None:
            raise ValueError(f"listener {listener!r} has no tls.acme")
        self.listener = listener
        self.tls = tls
        self.acme = tls.acme
        self.storage = Storage(self.acme.storage)
        self._http01 = http01
        self._terminator = terminator
        self._on_certificate = on_certificate
        self._renew_before = renew_before
        self._clock = clock
        self._skipped = tuple(skipped)
        if self.acme.challenge == TLS_ALPN01 and tls.client_ca:
            # OpenSSL keeps the listener's verify mode for the validation handshake, and the CA
            # has no client certificate: TLS 1.2 validations fail, TLS 1.3 ones may.
            log.warning("acme %s: tls-alpn-01 on a listener with client_ca is unreliable; use http-01", listener)
        now = clock()
        self._status: dict[str, HostStatus] = {h: new_host(h, now) for h in dict.fromkeys(hosts)}
        self._stored: dict[str, StoredCertificate] = {}
        self._client: AcmeClient | None = None
        self._executor = _DaemonThreads()
        self._presented: list[Task] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Future[None] | None = None

    @classmethod
    def for_listener(
        cls,
        policy: Policy,
        listener: str,
        http01: dict[str, bytes],
        terminator: TlsTerminator | None = None,
        **kwargs: Any,
    ) -> AcmeManager:
        """The manager for ``policy.listeners[listener]``, hosts taken from the routes."""
        tls = policy.listeners[listener].tls
        if tls is None or tls.acme is None:
            raise ValueError(f"listener {listener!r} has no tls.acme")
        plan = hosts_for_listener(policy, listener, _policy_names(terminator, tls))
        _log_skipped(listener, plan.skipped)
        return cls(listener, tls, plan.hosts, http01, terminator, skipped=plan.skipped, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Read what storage holds (calling ``on_certificate`` for each usable certificate), then
        issue and renew in the background. Returns without waiting for the CA."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._changed = self._loop.create_future()
        try:
            await self._run(self.storage.ensure)
        except StorageError as exc:
            log.error("acme %s: storage %s", self.listener, exc)
        await self._load(list(self._status))
        self._task = self._loop.create_task(self._main(), name=f"edge-acme-{self.listener}")

    async def stop(self) -> None:
        """Stop the task, withdraw any challenge answer. A CA call in flight is abandoned."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for presented in list(self._presented):
            self._withdraw(presented)

    def wake(self) -> None:
        """Look at the schedule now (after a clock change in tests, or new hosts)."""
        if self._wake is not None:
            self._wake.set()

    def update_policy(self, policy: Policy) -> None:
        """Adopt a reloaded policy's hosts for this listener (same ``tls.acme``).

        New hosts are issued soon; removed hosts are no longer renewed (their files stay).
        A changed ``tls.acme`` needs a new manager: stop this one and start another.
        """
        tls = policy.listeners[self.listener].tls
        if tls is None or tls.acme != self.acme:
            raise ValueError("tls.acme changed: replace the manager")
        self.tls = tls
        plan = hosts_for_listener(policy, self.listener, _policy_names(self._terminator, tls))
        _log_skipped(self.listener, plan.skipped)
        self._skipped = plan.skipped
        self.update_hosts(plan.hosts)

    def update_hosts(self, hosts: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(hosts))
        now = self._clock()
        added = [h for h in wanted if h not in self._status]
        self._status = {h: self._status.get(h) or new_host(h, now) for h in wanted}
        self._stored = {h: s for h, s in self._stored.items() if h in self._status}
        if added and self._loop is not None:
            self._loop.create_task(self._load_and_wake(added))
        self._notify()

    # -- what it reports -------------------------------------------------------------------
    def status(self) -> AcmeStatus:
        account = self._client.account_uri if self._client is not None else None
        return AcmeStatus(self.listener, self.acme.directory, self.acme.challenge, account,
                          tuple(self._status.values()), self._skipped)

    def certificates(self) -> tuple[Certificate, ...]:
        """The stored certificates this listener should serve, in host order.

        Append them to the policy's own (``serving_tls`` does).
        """
        return tuple(
            Certificate(cert=str(s.cert_path), key=str(s.key_path))
            for h in self._status
            if (s := self._stored.get(h)) is not None
        )

    def serving_tls(self) -> Tls:
        """The listener's ``tls`` with the ACME certificates after the policy's own: what its
        ``TlsTerminator`` should load (``terminator.update(manager.serving_tls())``)."""
        return replace(self.tls, certificates=self.tls.certificates + self.certificates())

    async def wait_until(self, predicate: Callable[[AcmeStatus], bool]) -> AcmeStatus:
        """Wait for a status change that satisfies ``predicate`` (tests, ``edge`` CLI)."""
        while True:
            status = self.status()
            if predicate(status):
                return status
            assert self._changed is not None, "start() first"
            await asyncio.shield(self._changed)

    # -- the task --------------------------------------------------------------------------
    async def _main(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                pause = await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end renewals for good
                log.exception("acme %s: unexpected error; trying again in %ds", self.listener, _LOOP_ERROR_PAUSE)
                pause = _LOOP_ERROR_PAUSE
            if pause > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), pause)
                except TimeoutError:
                    pass

    async def _round(self) -> float:
        """Issue what is due; return how long to sleep."""
        now = self._clock()
        for host, status in list(self._status.items()):
            self._set(host, advance(status, Event.TICK, now, renew_before=self._renew_before))
        due = [h for h, s in self._status.items() if wants_order(s, now)]
        if due and self._client is None:
            try:
                await self._register()
            except (AcmeFailure, StorageError) as exc:
                for host in due:
                    self._failed(host, str(exc))
                return 0.0
        for host in due:
            if host in self._status:  # a reload may have removed it meanwhile
                await self._attempt(host)
        return 0.0 if due else seconds_until_next(self._status.values(), self._clock())

    async def _register(self) -> None:
        key = await self._run(self.storage.account_key)
        client = AcmeClient(self.acme.directory, key, email=self.acme.email, ca_bundle=self.acme.ca_bundle)
        uri = await self._run(client.register)
        await self._run(self._remember_account, uri)
        self._client = client
        log.info("acme %s: account %s at %s", self.listener, uri, self.acme.directory)

    def _remember_account(self, uri: str) -> None:
        record = {"directory": self.acme.directory, "uri": uri, "email": self.acme.email}
        if self.storage.account_record() != record:
            self.storage.save_account_record(record)

    async def _attempt(self, host: str) -> None:
        self._set(host, advance(self._status[host], Event.STARTED, self._clock()))
        renewing = host in self._stored
        log.info("acme %s: %s certificate for %s (%s)", self.listener, "renewing" if renewing else "requesting",
                 host, self.acme.challenge)
        try:
            stored = await self._issue(host)
        except asyncio.CancelledError:
            raise
        except (AcmeFailure, StorageError) as exc:
            self._client = None  # the CA may have lost our account; ask again next time
            self._failed(host, str(exc))
            return
        except Exception as exc:  # an unexpected error from the acme package or OpenSSL
            log.debug("acme %s: %s", self.listener, host, exc_info=True)
            self._client = None
            self._failed(host, describe(exc))
            return
        self._stored[host] = stored
        if host in self._status:
            status = advance(self._status[host], Event.ISSUED, self._clock(),
                             validity=(stored.not_before, stored.not_after), renew_before=self._renew_before)
            self._set(host, status)
        log.info("acme %s: issued %s until %s (%s)", self.listener, host, stored.not_after.date(), stored.cert_path)
        self._deliver(stored)

    async def _issue(self, host: str) -> StoredCertificate:
        client = self._client
        assert client is not None
        if self.acme.challenge == TLS_ALPN01 and self._terminator is None:
            raise AcmeFailure("tls-alpn-01 needs the listener's TlsTerminator to answer on")
        key = key_pem(new_key())
        order, tasks = await self._run(client.order, host, key, self.acme.challenge)
        try:
            for task in tasks:
                await self._present(task)
                await self._run(client.answer, task)
            order = await self._run(client.wait_valid, order, deadline_after())
        finally:
            for task in tasks:
                self._withdraw(task)
        fullchain = await self._run(client.finalize, order, deadline_after())
        return await self._run(self._save, host, fullchain, key)

    def _save(self, host: str, fullchain: bytes, key: bytes) -> StoredCertificate:
        with self.storage.locked():
            return self.storage.save(host, fullchain, key, self.acme.directory, self._clock())

    # -- challenge answers (loop thread) ---------------------------------------------------
    async def _present(self, task: Task) -> None:
        if task.kind == HTTP01:
            self._http01[task.token] = task.key_authorization.encode("ascii")
        elif task.kind == TLS_ALPN01:
            assert self._terminator is not None
            context = await self._run(self._alpn_context, task)
            self._terminator.set_override(task.host, context)
        else:  # pragma: no cover - the policy allows only these two
            raise AcmeFailure(f"edge cannot answer {task.kind}")
        self._presented.append(task)

    def _withdraw(self, task: Task) -> None:
        if task.kind == HTTP01:
            self._http01.pop(task.token, None)
        elif task.kind == TLS_ALPN01 and self._terminator is not None:
            self._terminator.set_override(task.host, None)
        if task in self._presented:
            self._presented.remove(task)

    def _alpn_context(self, task: Task) -> ssl.SSLContext:
        """A context like the listener's, with the RFC 8737 certificate and only ``acme-tls/1``.

        The validator sends no client certificate, so ``client_ca`` is left out.
        """
        cert, key = validation_certificate(task.host, task.key_authorization, self._clock())
        settings = replace(TlsSettings.from_policy(self.tls), alpn=(ACME_TLS_ALPN,), client_ca=None)
        cert_path, key_path = self.storage.challenge_paths(task.host)
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        try:
            return server_context(settings, str(cert_path), str(key_path))
        finally:
            cert_path.unlink(missing_ok=True)
            key_path.unlink(missing_ok=True)

    # -- helpers ---------------------------------------------------------------------------
    async def _load(self, hosts: list[str]) -> None:
        """Read stored certificates for ``hosts``; deliver the usable ones."""
        for host in hosts:
            try:
                stored = await self._run(self.storage.load, host)
            except StorageError as exc:
                self._failed(host, str(exc))
                continue
            if host not in self._status:
                continue
            now = self._clock()
            if stored is not None and stored.directory not in (None, self.acme.directory):
                log.info("acme %s: %s was issued by %s, not %s: replacing it", self.listener, host,
                         stored.directory, self.acme.directory)
                self._stored[host] = stored
                self._set(host, advance(self._status[host], Event.LOADED, now, validity=None))
                self._deliver(stored)
                continue
            validity = None if stored is None else (stored.not_before, stored.not_after)
            self._set(host, advance(self._status[host], Event.LOADED, now, validity=validity,
                                    renew_before=self._renew_before))
            if stored is not None:
                self._stored[host] = stored
                self._deliver(stored)

    async def _load_and_wake(self, hosts: list[str]) -> None:
        try:
            await self._load(hosts)
        finally:
            self.wake()

    def _deliver(self, stored: StoredCertificate) -> None:
        if self._on_certificate is None:
            return
        try:
            self._on_certificate(stored.host, stored.cert_path, stored.key_path)
        except Exception:
            log.exception("acme %s: on_certificate failed for %s", self.listener, stored.host)

    def _failed(self, host: str, reason: str) -> None:
        if host not in self._status:
            return
        status = advance(self._status[host], Event.FAILED, self._clock(), error=reason)
        self._set(host, status)
        serving = "; the current certificate keeps serving" if host in self._stored else ""
        log.error("acme %s: %s: %s (attempt %d; next at %s%s)", self.listener, host, reason, status.failures,
                  status.next_check.isoformat(timespec="seconds"), serving)

    def _set(self, host: str, status: HostStatus) -> None:
        if self._status.get(host) != status:
            self._status[host] = status
            self._notify()

    def _notify(self) -> None:
        changed = self._changed
        if changed is None or self._loop is None:
            return
        self._changed = self._loop.create_future()
        if not changed.done():
            changed.set_result(None)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = self._loop or asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)


def _policy_names(terminator: TlsTerminator | None, tls: Tls) -> tuple[str, ...]:
    """Names served by the policy's own certificates (not by ones ACME added)."""
    if terminator is None:
        return ()
    own = set(tls.certificates)
    return tuple(n for c in terminator.certificates if c.source in own for n in c.names)


def _log_skipped(listener: str, skipped: Iterable[tuple[str, str]]) -> None:
    for host, reason in skipped:
        log.warning("acme %s: not issuing for %s: %s", listener, host, reason)


def stored_certificates(tls: Tls, hosts: Iterable[str]) -> tuple[Certificate, ...]:
    """Certificates already in ``tls.acme.storage`` for ``hosts``: serve them before the manager
    has started (blocking; reads a few small files)."""
    if tls.acme is None:
        return ()
    storage = Storage(tls.acme.storage)
    out = []
    for host in hosts:
        try:
            stored = storage.load(host)
        except StorageError:
            continue
        if stored is not None:
            out.append(Certificate(cert=str(stored.cert_path), key=str(stored.key_path)))
    return tuple(out)


__all__ = ["AcmeManager", "AcmeStatus", "CertificateCallback", "HostState", "stored_certificates"]
