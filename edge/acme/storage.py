"""The ``acme.storage`` directory: account key, account record, issued certificates.

Layout (directories 0700, files 0600, whatever the umask)::

    STORAGE/account.key            EC P-256 account key (PEM, PKCS#8)
    STORAGE/account.json           {"directory", "uri", "email"} of the registered account
    STORAGE/certs/HOST.pem         full chain, leaf first
    STORAGE/certs/HOST.key         the leaf's key (a fresh one per issuance)
    STORAGE/certs/HOST.json        {"directory", "issued"}: which CA issued it, and when
    STORAGE/challenges/            TLS-ALPN-01 certificates, for the seconds OpenSSL reads them

Invariants: every write goes to a temporary file in the same directory, is fsynced, then renamed
over the old one, so a reader (OpenSSL on SIGHUP, another edge) sees the old file or the new one,
never half of one. The key of a new certificate is renamed into place before its chain, and the
terminator refuses a chain that does not match its key, so the short window between the two
renames keeps the old certificate serving.

Knows nothing of ACME messages or of the schedule; all functions block (the manager calls them in
its worker thread).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DIR_MODE = 0o700
FILE_MODE = 0o600
ACCOUNT_KEY = "account.key"
ACCOUNT_JSON = "account.json"
CERTS = "certs"
CHALLENGES = "challenges"
LOCK = ".lock"

_SAFE_HOST = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$")


class StorageError(Exception):
    """The storage directory cannot be used (permissions, a foreign file); names the path."""


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    """A certificate found in storage, with what the schedule needs to know about it."""

    host: str
    cert_path: Path
    key_path: Path
    not_before: dt.datetime
    not_after: dt.datetime
    directory: str | None  # the ACME directory that issued it (None: unknown, older layout)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # O_CREAT's mode is masked by the umask
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != DIR_MODE:
            os.chmod(path, DIR_MODE)
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror or exc}") from None
    return path


class Storage:
    """One ``acme.storage`` directory. Created on first use with owner-only permissions."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- layout ----------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the directories (0700), tightening them if they are wider."""
        _private_dir(self.root)
        _private_dir(self.root / CERTS)
        _private_dir(self.root / CHALLENGES)

    def cert_paths(self, host: str) -> tuple[Path, Path]:
        stem = self._stem(host)
        certs = self.root / CERTS
        return certs / f"{stem}.pem", certs / f"{stem}.key"

    @staticmethod
    def _stem(host: str) -> str:
        if not _SAFE_HOST.match(host):
            raise StorageError(f"{host!r} is not a host name edge stores certificates for")
        return host

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers of this storage (two edge processes sharing it)."""
        self.ensure()
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- account ---------------------------------------------------------------------------
    def account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, created on first use."""
        self.ensure()
        path = self.root / ACCOUNT_KEY
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = new_key()
            write_private(path, key_pem(key))
            return key
        except OSError as exc:
            raise StorageError(f"{path}: {exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise StorageError(f"{path}: edge's account key is EC P-256; move this one away")
        _tighten(path)
        return key

    def account_record(self) -> dict | None:
        path = self.root / ACCOUNT_JSON
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def save_account_record(self, record: dict) -> None:
        self.ensure()
        write_private(self.root / ACCOUNT_JSON, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")

    # -- certificates ----------------------------------------------------------------------
    def load(self, host: str) -> StoredCertificate | None:
        """The stored certificate for ``host`` if its files are there, parse, match and name it."""
        cert_path, key_path = self.cert_paths(host)
        try:
            chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            return None
        leaf = chain[0]
        if key.public_key() != leaf.public_key():
            return None
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
        except x509.ExtensionNotFound:
            names = set()
        if host not in names:
            return None
        for path in (cert_path, key_path):
            _tighten(path)
        meta = self._meta(host)
        return StoredCertificate(host, cert_path, key_path, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                                 meta.get("directory"))

    def save(self, host: str, fullchain_pem: bytes, key: bytes, directory: str, now: dt.datetime) -> StoredCertificate:
        """Store a new certificate (key first, then chain, then metadata) and read it back."""
        self.ensure()
        cert_path, key_path = self.cert_paths(host)
        write_private(key_path, key)
        write_private(cert_path, fullchain_pem)
        meta = {"directory": directory, "issued": now.isoformat()}
        write_private(cert_path.with_suffix(".json"), json.dumps(meta, sort_keys=True).encode() + b"\n")
        stored = self.load(host)
        if stored is None:
            raise StorageError(f"{cert_path}: the CA's certificate does not match its key or host {host}")
        return stored

    def _meta(self, host: str) -> dict:
        cert_path, _ = self.cert_paths(host)
        try:
            meta = json.loads(cert_path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def challenge_paths(self, host: str) -> tuple[Path, Path]:
        stem = self._stem(host)
        base = self.root / CHALLENGES
        return base / f"{stem}.alpn.pem", base / f"{stem}.alpn.key"


def _tighten(path: Path) -> None:
    """Files edge wrote are 0600; a copy restored from backup may not be: fix it quietly."""
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, FILE_MODE)
    except OSError:
        pass
