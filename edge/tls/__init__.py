"""TLS termination for edge's listeners: contexts from the policy, SNI, certificate reload."""

from edge.tls.context import HANDSHAKE_TIMEOUT, TLS12_CIPHERS, TlsSettings, server_context
from edge.tls.sni import SniIndex
from edge.tls.terminator import CertificateError, LoadedCertificate, TlsError, TlsTerminator, load_certificate

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TLS12_CIPHERS",
    "CertificateError",
    "LoadedCertificate",
    "SniIndex",
    "TlsError",
    "TlsSettings",
    "TlsTerminator",
    "load_certificate",
    "server_context",
]
