"""ACME (RFC 8555) for TLS listeners with ``tls.acme``: HTTP-01 and TLS-ALPN-01, renewal, storage.

``plan`` is the pure schedule, ``storage`` the files, ``challenge`` the TLS-ALPN-01 pieces,
``client`` the blocking calls through the ``acme`` package, ``manager`` the asyncio shell.
"""

from edge.acme.challenge import ACME_TLS_ALPN, HTTP01, TLS_ALPN01, validation_certificate
from edge.acme.client import AcmeFailure
from edge.acme.manager import AcmeManager, AcmeStatus, CertificateCallback, stored_certificates
from edge.acme.plan import RENEW_BEFORE, HostPlan, HostState, HostStatus, hosts_for_listener
from edge.acme.storage import Storage, StorageError

__all__ = [
    "ACME_TLS_ALPN",
    "HTTP01",
    "RENEW_BEFORE",
    "TLS_ALPN01",
    "AcmeFailure",
    "AcmeManager",
    "AcmeStatus",
    "CertificateCallback",
    "HostPlan",
    "HostState",
    "HostStatus",
    "Storage",
    "StorageError",
    "hosts_for_listener",
    "stored_certificates",
    "validation_certificate",
]
