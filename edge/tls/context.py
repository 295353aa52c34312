"""Server-side ``ssl.SSLContext`` settings: one builder, so every context edge makes agrees.

Owns the TLS parameters users cannot get wrong: TLS 1.2 minimum (1.3 by choice), TLS 1.3
preferred (OpenSSL negotiates the highest both sides support), for TLS 1.2 only ECDHE key
exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305; TLS 1.3 suites are all AEAD already), no
renegotiation, no compression, ALPN from the policy, optional client certificates.

Invariant relied on by ``edge.tls.terminator``: the listener's context and every per-certificate
context swapped in by the SNI callback come from ``server_context`` with the same settings.
OpenSSL takes some parameters from the first context (versions, ciphers, options, verify mode,
tickets: copied when the connection is created) and others from the swapped-in one (certificate,
ALPN callback, client-CA trust store), so only identical settings give predictable behaviour.

Knows nothing of files other than the ones it is told to load, nor of SNI.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal

from edge.policy.model import Tls

# Mozilla "intermediate" TLS 1.2 list without the finite-field DHE suites (slow, and ECDHE is
# universal among clients that still matter): forward secrecy and AEAD only.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

# TLS 1.3 session tickets sent per full handshake: two lets a browser open two resumed
# connections in parallel (its usual pattern) without a full handshake on the second.
NUM_TICKETS = 2

# What to pass as ``ssl_handshake_timeout`` to ``loop.create_server``: a client that has not
# finished its handshake by then is dropped, so a silent or slow-drip client costs one socket for
# at most this long. 10 s covers a phone on a bad mobile link (several round trips at 1-2 s RTT).
HANDSHAKE_TIMEOUT = 10.0

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

Resumption = Literal["cache", "tickets"]


class DirectSSLObject(ssl.SSLObject):
    """An ``SSLObject`` whose ``read``, ``write`` and ``pending`` are the C methods themselves.

    uvloop's TLS transport calls these once or twice per read and once per write; ``SSLObject``'s
    own are Python functions that only forward to the C object (``self._sslobj.read(len)``...).
    Measured with ``PROTO=https bench/tools/fixed_work.sh ... ops``: 3.05 such Python calls per
    keep-alive request, each a frame pushed from Cython. Same arguments, results and exceptions.
    """

    @classmethod
    def _create(cls, *args, **kwargs):  # type: ignore[override]
        obj = super()._create(*args, **kwargs)
        inner = obj._sslobj  # type: ignore[attr-defined]
        obj.read = inner.read  # type: ignore[method-assign]
        obj.write = inner.write  # type: ignore[method-assign]
        obj.pending = inner.pending  # type: ignore[method-assign]
        return obj


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Everything but the certificates: what a listener's contexts share.

    ``resumption``: "cache" (default) keeps resumable sessions in this process's memory and gives
    clients only a session id (TLS 1.2) or a stateful ticket (TLS 1.3): no long-lived ticket key
    exists, sessions expire with the cache (OpenSSL: 2 h, LRU-bounded), forward secrecy holds.
    "tickets" uses OpenSSL's stateless tickets, encrypted with a random key made per listener
    context (so a restart is the rotation); resumption then also survives cache pressure and
    works across workers forked after the context was made.
    """

    min_version: Literal["1.2", "1.3"] = "1.2"
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    client_ca: str | None = None
    resumption: Resumption = "cache"

    @classmethod
    def from_policy(cls, tls: Tls, resumption: Resumption = "cache") -> TlsSettings:
        return cls(min_version=tls.min_version, alpn=tuple(tls.alpn), client_ca=tls.client_ca, resumption=resumption)


def server_context(settings: TlsSettings, certfile: str | None = None, keyfile: str | None = None) -> ssl.SSLContext:
    """A server context with ``settings`` and, if given, one certificate chain and its key.

    Raises ``ssl.SSLError``/``OSError`` for an unreadable or mismatched certificate or client CA.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = DirectSSLObject  # what wrap_bio (uvloop's TLS transport) makes
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(TLS12_CIPHERS)
    # Every offered suite is strong, so let the client choose: phones without AES hardware pick
    # ChaCha20 (Mozilla's advice for this list).
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    apply_resumption(ctx, settings.resumption)
    ctx.num_tickets = NUM_TICKETS
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    if settings.client_ca:
        ctx.load_verify_locations(cafile=settings.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def apply_resumption(ctx: ssl.SSLContext, resumption: Resumption) -> None:
    """OP_NO_TICKET makes OpenSSL keep sessions server-side (stateful TLS 1.3 tickets)."""
    if resumption == "cache":
        ctx.options |= ssl.OP_NO_TICKET
    else:
        ctx.options &= ~ssl.OP_NO_TICKET


def apply_to_listener_context(ctx: ssl.SSLContext, settings: TlsSettings) -> None:
    """Bring a live listener context to new settings (reload without re-binding the socket).

    Only what OpenSSL copies into each new connection is changed here; certificate, ALPN and
    client-CA store live in the per-certificate contexts, which are rebuilt instead.
    """
    ctx.minimum_version = _VERSIONS[settings.min_version]
    apply_resumption(ctx, settings.resumption)
    ctx.verify_mode = ssl.CERT_REQUIRED if settings.client_ca else ssl.CERT_NONE
