"""edge's internal CA: an ECDSA P-256 root and the short-lived leaf certificates it signs.

Owns the CA directory layout and every file in it:

    DIR/root.pem   the root certificate (PEM), what devices import
    DIR/root.crt   the same certificate in DER, for phones and Windows' double-click install
    DIR/root.key   the root's private key, mode 0600 (whoever holds it can impersonate any site
                   to every device that trusts the root)
    DIR/NAME.pem   a leaf certificate followed by the root (the chain a server sends)
    DIR/NAME.key   the leaf's private key, mode 0600

Invariants: keys are never world- or group-readable, not even for an instant (created 0600 and
renamed into place, so a reader sees either the old file or the whole new one); a leaf is always
valid for the names asked, signed by this root, and at most ``MAX_LEAF_DAYS`` long. Several
``edge serve`` workers may call ``ensure_leaf`` at once: a lock file serialises them.

Knows nothing of TLS listeners or the policy file; ``edge.tls`` loads the files it writes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_CERT = "root.pem"
ROOT_DER = "root.crt"
ROOT_KEY = "root.key"
LOCK_FILE = ".lock"

# A root outlives many leaves; ten years spares users re-importing it on every phone.
ROOT_DAYS = 3650
DEFAULT_LEAF_DAYS = 30
# Apple rejects TLS server certificates from private roots valid for longer than 825 days.
MAX_LEAF_DAYS = 825
# Backdate notBefore so a client whose clock runs a little behind still accepts a fresh leaf.
CLOCK_SKEW = dt.timedelta(hours=1)
# ensure_leaf re-issues once less than this share of a leaf's lifetime remains (10 of 30 days).
RENEW_FRACTION = 1 / 3

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class CaError(Exception):
    """A CA operation failed at run time (missing CA, unreadable file): CLI exit 1."""


class BadName(ValueError):
    """A requested certificate name is not a DNS name or IP address: CLI exit 2."""


@dataclass(frozen=True, slots=True)
class Authority:
    """A loaded CA: its directory, root certificate and key."""

    directory: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def root_path(self) -> Path:
        return self.directory / ROOT_CERT


@dataclass(frozen=True, slots=True)
class Leaf:
    """Where a leaf was written, and what it covers."""

    cert_path: Path
    key_path: Path
    names: tuple[str, ...]
    not_after: dt.datetime
    issued: bool = True  # False: ensure_leaf found a current leaf and left it alone


# -- names -------------------------------------------------------------------------------------


def normalize_name(name: str) -> str:
    """One SAN entry in canonical form: an IP address, or a lower-case A-label DNS name.

    Raises BadName for anything a client could never match (empty labels, ``*`` anywhere but
    as the whole first label, over-long names), so a typo fails at issue time, not at the phone.
    """
    raw = name.strip()
    try:
        return str(ipaddress.ip_address(raw.strip("[]")))
    except ValueError:
        pass
    host = raw.rstrip(".").lower()
    if not host:
        raise BadName(f"{name!r}: empty name")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise BadName(f"{name!r}: not a valid domain name ({exc})") from None
    labels = host.split(".")
    if len(host) > 253:
        raise BadName(f"{name!r}: longer than 253 characters")
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) > 2:
            continue
        if not _LABEL.match(label):
            raise BadName(f"{name!r}: invalid label {label!r} (letters, digits, '-', and '*.' only as prefix)")
    return host


def file_stem(name: str) -> str:
    """File name for a leaf: its first name, with a wildcard spelled out (as mkcert does)."""
    stem = name.replace("*", "_wildcard").replace(":", "_")
    return stem


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def cert_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The SAN entries of a certificate as normalized strings (DNS names and IPs)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


# -- files -------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so readers never see a partial file or wider permissions."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask; the key's must not be
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one CA directory (several workers starting at once)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# -- the root ----------------------------------------------------------------------------------


def root_subject_name() -> str:
    """'edge internal CA <host> <date>': tells a user in a phone's trust list where it came from."""
    return f"edge internal CA {socket.gethostname().split('.')[0]} {_now():%Y-%m-%d}"


def init_ca(directory: str | os.PathLike[str], *, permitted: Sequence[str] = ()) -> Authority:
    """Create a new root in ``directory``; refuse if one is there (devices may already trust it).

    ``permitted`` adds a critical Name Constraints extension: the root can then only vouch for
    those domains (and their subdomains), which limits the damage if its key ever leaks.
    """
    directory = Path(directory)
    with locked(directory):
        if (directory / ROOT_CERT).exists() or (directory / ROOT_KEY).exists():
            raise CaError(f"{directory} already holds a CA ({ROOT_CERT}); not overwriting a root devices may trust")
        return _create_root(directory, [normalize_name(p) for p in permitted])


def _create_root(directory: Path, permitted: Sequence[str]) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, root_subject_name()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge internal CA"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if permitted:
        subtrees = [x509.DNSName(p) for p in permitted if not _is_ip(p)]
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None), True)
    cert = builder.sign(key, hashes.SHA256())
    # Key first: a crash in between leaves a key without a cert, which init refuses to overwrite
    # rather than a cert whose key is lost.
    _write_atomic(directory / ROOT_KEY, _key_pem(key), 0o600)
    _write_atomic(directory / ROOT_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_atomic(directory / ROOT_DER, cert.public_bytes(serialization.Encoding.DER), 0o644)
    return Authority(directory, cert, key)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def load_ca(directory: str | os.PathLike[str]) -> Authority:
    """Read the root certificate and key from ``directory``; CaError names what is wrong."""
    directory = Path(directory)
    cert_path, key_path = directory / ROOT_CERT, directory / ROOT_KEY
    if not cert_path.exists():
        raise CaError(f"no CA in {directory} ({ROOT_CERT} missing): run `edge ca init --dir {directory}` first")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaError(f"{cert_path}: cannot read root certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CaError(f"{key_path}: cannot read root key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CaError(f"{key_path}: does not belong to {cert_path}")
    return Authority(directory, cert, key)


def ensure_ca(directory: str | os.PathLike[str]) -> Authority:
    """Load the CA in ``directory``, creating it first if there is none."""
    directory = Path(directory)
    with locked(directory):
        if not (directory / ROOT_CERT).exists() and not (directory / ROOT_KEY).exists():
            return _create_root(directory, ())
    return load_ca(directory)


def permitted_domains(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS subtrees a root is constrained to (empty: unconstrained)."""
    try:
        nc = certificate.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.value for n in nc.permitted_subtrees or () if isinstance(n, x509.DNSName))


def _within(name: str, domain: str) -> bool:
    bare = name[2:] if name.startswith("*.") else name
    return bare == domain or bare.endswith("." + domain)


# -- leaves ------------------------------------------------------------------------------------


def issue_leaf(
    ca: Authority,
    names: Sequence[str],
    *,
    cert_path: str | os.PathLike[str] | None = None,
    key_path: str | os.PathLike[str] | None = None,
    days: int = DEFAULT_LEAF_DAYS,
    client: bool = False,
) -> Leaf:
    """Issue a leaf for ``names`` (DNS names and IPs; the first becomes the CN and file name).

    Writes key then chain (leaf + root) atomically; ``client`` adds clientAuth to the EKU so the
    same certificate can authenticate an mTLS client (e.g. one edge talking to another).
    """
    if not 1 <= days <= MAX_LEAF_DAYS:
        raise BadName(f"--days must be 1-{MAX_LEAF_DAYS} (Apple devices reject longer), got {days}")
    if not names:
        raise BadName("at least one name is needed")
    normal = tuple(dict.fromkeys(normalize_name(n) for n in names))
    allowed = permitted_domains(ca.certificate)
    for name in normal:
        if allowed and not _is_ip(name) and not any(_within(name, d) for d in allowed):
            raise BadName(f"{name!r}: outside the CA's permitted domains ({', '.join(allowed)})")
    stem = file_stem(normal[0])
    cert_file = Path(cert_path) if cert_path else ca.directory / f"{stem}.pem"
    key_file = Path(key_path) if key_path else ca.directory / f"{stem}.key"

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, normal[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(  # ECDSA signs the handshake; keyEncipherment is an RSA-only usage
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(_san(normal), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(serialization.Encoding.PEM)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(key_file, _key_pem(key), 0o600)
    _write_atomic(cert_file, chain, 0o644)
    return Leaf(cert_file, key_file, normal, cert.not_valid_after_utc)


def leaf_is_current(
    ca: Authority, names: Sequence[str], cert_path: Path, key_path: Path, *, now: dt.datetime | None = None
) -> bool:
    """True if the files hold a leaf by this CA, for exactly these names, far enough from expiry."""
    now = now or _now()
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if key.public_key() != cert.public_key() or cert.issuer != ca.certificate.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    wanted = {normalize_name(n) for n in names}
    if set(cert_names(cert)) != wanted:
        return False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now > lifetime * RENEW_FRACTION


def ensure_leaf(
    ca_dir: str | os.PathLike[str],
    names: Sequence[str],
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    days: int = DEFAULT_LEAF_DAYS,
    now: dt.datetime | None = None,
) -> Leaf:
    """Make ``cert_path``/``key_path`` a current leaf for ``names`` by the CA in ``ca_dir``.

    Creates the CA if absent; (re)issues the leaf if missing, broken, for other names, by another
    CA, or within the last third of its life. Safe to call at every start and every reload: an
    unchanged leaf is left alone (so its mtime does not change and TLS reload skips it).
    """
    ca = ensure_ca(ca_dir)
    cert_file, key_file = Path(cert_path), Path(key_path)
    with locked(ca.directory):
        if leaf_is_current(ca, names, cert_file, key_file, now=now):
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            return Leaf(cert_file, key_file, cert_names(cert), cert.not_valid_after_utc, issued=False)
        return issue_leaf(ca, names, cert_path=cert_file, key_path=key_file, days=days)


def ensure_demo_pki(
    directory: str | os.PathLike[str], names: Sequence[str] = ("localhost", "127.0.0.1", "::1")
) -> tuple[Path, Path, Path]:
    """CA and one leaf in ``directory`` for a zero-set-up HTTPS demo: (cert, key, root) paths."""
    directory = Path(directory)
    stem = file_stem(normalize_name(names[0]))
    leaf = ensure_leaf(directory, names, directory / f"{stem}.pem", directory / f"{stem}.key")
    return leaf.cert_path, leaf.key_path, directory / ROOT_CERT
