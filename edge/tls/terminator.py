"""A TLS listener's certificates: loading, SNI dispatch, and reload without dropping anything.

``TlsTerminator`` owns one listener's ``ssl.SSLContext`` (handed once to ``create_server``) and
one context per certificate. Its SNI callback asks the pure ``SniIndex`` for a position and swaps
the connection onto that certificate's context; the callback runs for every handshake, with or
without SNI, so every connection ends up on a per-certificate context.

Invariants:
- the listener context never changes identity; reloads swap one immutable ``_Snapshot``
  (certificates + index) in a single assignment, so a handshake sees the old set or the new one;
- a certificate whose files break on reload is kept as it was (``CertificateError`` names the file
  and the reason), so a bad deploy never takes a site down;
- unchanged files are not re-parsed (stat signature first, then a content hash).

Knows nothing of HTTP, listeners' sockets or ACME; ACME can feed issued files through ``update``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from edge.policy.model import Certificate, Tls
from edge.tls.context import (
    Resumption,
    TlsSettings,
    apply_to_listener_context,
    server_context,
)
from edge.tls.sni import SniIndex, names_of, normalize

log = logging.getLogger("edge.tls")

_Stamp = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns): cheap "did it change?"


@dataclass(frozen=True, slots=True)
class CertificateError:
    """Why one certificate could not be (re)loaded; ``file`` is the file at fault."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class TlsError(Exception):
    """The listener cannot start: some certificate or the client CA failed to load."""

    def __init__(self, errors: Sequence[CertificateError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """One certificate as serving: where from, which names, until when, and its context."""

    source: Certificate
    names: tuple[str, ...]
    not_after: dt.datetime
    digest: bytes
    stamp: tuple[_Stamp, _Stamp]
    context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class _Snapshot:
    settings: TlsSettings
    certificates: tuple[LoadedCertificate, ...]
    index: SniIndex


def _stamp(path: str) -> _Stamp:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _digest(cert: bytes, key: bytes) -> bytes:
    return hashlib.sha256(len(cert).to_bytes(8, "big") + cert + key).digest()


def load_certificate(source: Certificate, settings: TlsSettings) -> LoadedCertificate | CertificateError:
    """Read, check and load one cert/key pair; on failure say which file and why."""
    try:
        stamp = (_stamp(source.cert), _stamp(source.key))
    except OSError as exc:
        return CertificateError(exc.filename or source.cert, exc.strerror or str(exc))
    try:
        cert_pem = _read(source.cert)
    except OSError as exc:
        return CertificateError(source.cert, exc.strerror or str(exc))
    try:
        key_pem = _read(source.key)
    except OSError as exc:
        return CertificateError(source.key, exc.strerror or str(exc))
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        return CertificateError(source.cert, f"not a PEM certificate ({exc})")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return CertificateError(source.key, "private key is encrypted (edge needs it unencrypted)")
    except (ValueError, UnsupportedAlgorithm) as exc:
        return CertificateError(source.key, f"not a PEM private key ({exc})")
    leaf = chain[0]
    if key.public_key() != leaf.public_key():
        return CertificateError(source.key, f"does not match the certificate in {source.cert}")
    try:
        context = server_context(settings, source.cert, source.key)
    except (ssl.SSLError, OSError) as exc:
        return CertificateError(source.cert, f"rejected by OpenSSL ({exc})")
    try:
        again = _digest(_read(source.cert), _read(source.key))
    except OSError as exc:
        return CertificateError(exc.filename or source.cert, exc.strerror or str(exc))
    digest = _digest(cert_pem, key_pem)
    if again != digest:  # a writer replaced a file between our read and OpenSSL's
        return CertificateError(source.cert, "changed while being loaded; reload again")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    names = names_of(dns, str(cn[0].value) if cn else None)
    return LoadedCertificate(source, names, leaf.not_valid_after_utc, digest, stamp, context)


class TlsTerminator:
    """One TLS listener: the ``context`` for ``create_server`` and the certificates behind it.

    Usage from the listener::

        terminator = TlsTerminator(listener.tls)            # raises TlsError if a cert is broken
        await loop.create_server(factory, host, port, ssl=terminator.context,
                                 ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        ...
        errors = terminator.reload()                        # SIGHUP, same policy
        errors = terminator.update(new_listener.tls)        # SIGHUP, changed policy
    """

    def __init__(self, tls: Tls, *, resumption: Resumption = "cache") -> None:
        settings = TlsSettings.from_policy(tls, resumption)
        try:
            self._context = server_context(settings)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError([CertificateError(tls.client_ca or "?", f"client CA: {exc}")]) from None
        self._overrides: dict[str, ssl.SSLContext] = {}
        self._retired: Counter[str] = Counter()
        self._context.sni_callback = self._on_server_name
        loaded: list[LoadedCertificate] = []
        errors: list[CertificateError] = []
        for source in tls.certificates:
            result = load_certificate(source, settings)
            (errors if isinstance(result, CertificateError) else loaded).append(result)  # type: ignore[arg-type]
        if errors:
            raise TlsError(errors)
        self._snapshot = _snapshot(settings, loaded)
        _warn_expired(self._snapshot.certificates)

    @property
    def context(self) -> ssl.SSLContext:
        """The listener's context: pass it as ``ssl=`` once; it stays valid across reloads."""
        return self._context

    @property
    def certificates(self) -> tuple[LoadedCertificate, ...]:
        """What is serving now, in policy order (the first is the default)."""
        return self._snapshot.certificates

    def select(self, server_name: str | None) -> LoadedCertificate | None:
        """The certificate a handshake for ``server_name`` gets (for status pages and tests)."""
        snapshot = self._snapshot
        position = snapshot.index.select(server_name)
        return None if position is None else snapshot.certificates[position]

    def set_override(self, server_name: str, context: ssl.SSLContext | None) -> None:
        """Answer ``server_name`` from ``context`` until cleared with None, ahead of SNI rules.

        For the ACME TLS-ALPN-01 challenge (a context with the challenge certificate and
        ``acme-tls/1`` as its only ALPN protocol) during the seconds a validation takes.
        The context must come from ``server_context`` for the listener's settings.
        """
        name = normalize(server_name)
        if context is None:
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = context

    def session_stats(self) -> dict[str, int]:
        """OpenSSL's counters for this listener (accept_good, hits, misses, ...) for metrics.

        OpenSSL counts handshakes on the context a connection ended on (per certificate) and
        cache hits on the listener context, so this sums them all, including retired ones, so
        the totals never go down across reloads (Prometheus counters).
        """
        totals = Counter(self._retired)
        for ctx in (self._context, *(c.context for c in self._snapshot.certificates)):
            totals.update(ctx.session_stats())
        return dict(totals)

    def reload(self) -> list[CertificateError]:
        """Re-read changed certificate/key files; broken ones keep their old certificate.

        Cheap when nothing changed (two ``stat`` calls per certificate). Errors are logged and
        returned; new handshakes use the new certificates as soon as this returns.
        """
        snapshot = self._snapshot
        return self._apply(snapshot.settings, [c.source for c in snapshot.certificates], snapshot.settings)

    def update(self, tls: Tls, *, resumption: Resumption | None = None) -> list[CertificateError]:
        """Adopt a changed policy: new certificate list and settings, same listener context.

        A certificate already serving from the same files whose files now break stays served; a
        new one that fails is left out (and reported). A client CA that fails to load keeps the
        previous settings entirely (never fall back to accepting clients without certificates).
        """
        old = self._snapshot.settings
        settings = TlsSettings.from_policy(tls, resumption or old.resumption)
        if settings != old and settings.client_ca:
            try:
                server_context(settings)
            except (ssl.SSLError, OSError) as exc:
                error = CertificateError(
                    settings.client_ca, f"client CA not loaded, keeping previous TLS settings ({exc})"
                )
                log.error("tls: %s", error)
                return [error, *self._apply(old, list(tls.certificates), old)]
        return self._apply(settings, list(tls.certificates), old)

    def _apply(self, settings: TlsSettings, sources: list[Certificate], old: TlsSettings) -> list[CertificateError]:
        same_settings = settings == old
        previous = {(c.source.cert, c.source.key): c for c in self._snapshot.certificates}
        loaded: list[LoadedCertificate] = []
        errors: list[CertificateError] = []
        for source in sources:
            before = previous.get((source.cert, source.key))
            if before is not None and same_settings and _unchanged(before):
                loaded.append(before)
                continue
            result = load_certificate(source, settings)
            if isinstance(result, CertificateError):
                errors.append(result)
                if before is not None:  # its context has the old settings: better than no site
                    log.error("tls: %s (keeping the previous certificate)", result)
                    loaded.append(before)
                else:
                    log.error("tls: %s (certificate not loaded)", result)
                continue
            if before is not None and same_settings and result.digest == before.digest:
                loaded.append(replace(before, stamp=result.stamp))  # touched, not changed
                continue
            loaded.append(result)
            log.info("tls: loaded %s (%s, until %s)", source.cert, ", ".join(result.names), result.not_after.date())
            _warn_expired([result])
        if not same_settings:
            apply_to_listener_context(self._context, settings)
        kept = {id(c.context) for c in loaded}
        for old_certificate in self._snapshot.certificates:
            if id(old_certificate.context) not in kept:
                stats = old_certificate.context.session_stats()
                stats.pop("number", None)  # a gauge (sessions cached now), not a counter
                self._retired.update(stats)
        self._snapshot = _snapshot(settings, loaded)
        return errors

    def _on_server_name(self, conn: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        """OpenSSL's servername callback: move the handshake onto the chosen certificate."""
        if self._overrides and server_name:
            override = self._overrides.get(normalize(server_name))
            if override is not None:
                conn.context = override
                return None
        snapshot = self._snapshot
        position = snapshot.index.select(server_name)
        if position is None:  # no certificate at all (ACME has not issued yet)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        conn.context = snapshot.certificates[position].context
        return None


def _unchanged(current: LoadedCertificate) -> bool:
    try:
        return (_stamp(current.source.cert), _stamp(current.source.key)) == current.stamp
    except OSError:
        return False


def _snapshot(settings: TlsSettings, loaded: Sequence[LoadedCertificate]) -> _Snapshot:
    certificates = tuple(loaded)
    return _Snapshot(settings, certificates, SniIndex.build([c.names for c in certificates]))


def _warn_expired(certificates: Sequence[LoadedCertificate], now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.UTC)
    for c in certificates:
        if c.not_after <= now:
            log.warning("tls: %s expired on %s; clients will refuse it", c.source.cert, c.not_after.date())
