"""Internal-CA certificates a listener serves: create them if missing, renew them before expiry.

Leaves from ``edge ca`` live 30 days, so something must renew them: ``edge serve`` calls
``ensure_internal(listener.tls)`` at start and daily (then ``TlsTerminator.reload()``). A policy
certificate counts as internal when its files sit in an edge CA directory (one holding
``root.key``); the leaf keeps the names it has, or takes them from its file name when it does
not exist yet (``nas.lan.pem`` -> nas.lan, ``_wildcard.lan.pem`` -> *.lan, ``localhost.pem`` ->
localhost, 127.0.0.1, ::1). ``create_ca=True`` also creates a CA in a certificate's directory
if that directory is missing or empty (never next to unrelated files): that is how the demo
policy gets HTTPS with zero set-up.

Never touches certificates outside CA directories (ACME's, or a user's own).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edge.ca.authority import ROOT_CERT, ROOT_KEY, BadName, CaError, Leaf, cert_names, ensure_leaf, normalize_name
from edge.policy.model import Tls

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class InternalError:
    """An internal certificate that could not be issued: the file and why."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def names_for(cert_path: Path) -> tuple[str, ...]:
    """Names for a leaf at ``cert_path``: those it already has, else from its file name."""
    try:
        existing = cert_names(x509.load_pem_x509_certificates(cert_path.read_bytes())[0])
    except (OSError, ValueError, IndexError):
        existing = ()
    if existing:
        return existing
    stem = cert_path.stem
    if stem == "localhost":
        return LOOPBACK_NAMES
    return (normalize_name(stem.replace("_wildcard", "*", 1) if stem.startswith("_wildcard.") else stem),)


def _vacant(directory: Path) -> bool:
    try:
        return not any(directory.iterdir())
    except FileNotFoundError:
        return True
    except OSError:
        return False


def ensure_internal(
    tls: Tls, *, create_ca: bool = False, now: dt.datetime | None = None
) -> tuple[list[Leaf], list[InternalError]]:
    """Issue missing and renew expiring internal leaves of ``tls``; returns (leaves, errors).

    Unchanged leaves are left byte-for-byte alone, so calling this often costs only reads.
    """
    leaves: list[Leaf] = []
    errors: list[InternalError] = []
    for certificate in tls.certificates:
        cert_path, key_path = Path(certificate.cert), Path(certificate.key)
        ca_dir = cert_path.parent
        has_ca = (ca_dir / ROOT_KEY).exists() or (ca_dir / ROOT_CERT).exists()
        if not has_ca and not (create_ca and _vacant(ca_dir)):
            continue
        try:
            leaves.append(ensure_leaf(ca_dir, names_for(cert_path), cert_path, key_path, now=now))
        except BadName as exc:
            errors.append(InternalError(certificate.cert, f"cannot derive names from the file name: {exc}"))
        except (CaError, OSError) as exc:
            errors.append(InternalError(certificate.cert, str(exc)))
    return leaves, errors
