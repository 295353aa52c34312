"""The two challenges edge answers itself: HTTP-01 (RFC 8555 8.3) and TLS-ALPN-01 (RFC 8737).

HTTP-01 needs nothing here beyond the ``acme`` package: the plain listeners answer
``/.well-known/acme-challenge/TOKEN`` with the key authorization from a dict.

TLS-ALPN-01: the ``acme`` package (since 3.x) no longer models this challenge, so it is
declared here with the package's public registration hook, and the validation certificate is
built with ``cryptography``: self-signed, the host as its only SAN, and the critical
id-pe-acmeIdentifier extension holding SHA-256(key authorization) as a DER OCTET STRING.
The listener answers the validator with that certificate and ``acme-tls/1`` as the only ALPN
protocol (``TlsTerminator.set_override``).

Knows nothing of orders, storage layout or the schedule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import josepy as jose
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

# The validation certificate only has to outlive one validation; a day covers clock skew.
_VALIDATION_CERT_LIFETIME = dt.timedelta(days=1)


if TLS_ALPN01 in challenges.ChallengeResponse.TYPES:  # pragma: no cover - a future acme has it back
    TLSALPN01Response: Any = challenges.ChallengeResponse.TYPES[TLS_ALPN01]
    TLSALPN01: Any = challenges.Challenge.TYPES[TLS_ALPN01]
else:

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        """Response to tls-alpn-01: the JSON body is ``{}`` like every RFC 8555 response."""

        typ = TLS_ALPN01

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        """The tls-alpn-01 challenge; ``validation`` is SHA-256 of the key authorization."""

        response_cls = TLSALPN01Response
        typ = TLS_ALPN01

        def validation(self, account_key: jose.JWK, **unused_kwargs: Any) -> bytes:
            return hashlib.sha256(self.key_authorization(account_key).encode("ascii")).digest()


def acme_identifier_value(key_authorization: str) -> bytes:
    """The extension's DER value: OCTET STRING (0x04), length 32, SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest


def validation_certificate(
    host: str, key_authorization: str, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The RFC 8737 section 3 certificate that proves control of ``host`` on its TLS port."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDATION_CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, acme_identifier_value(key_authorization)),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key
