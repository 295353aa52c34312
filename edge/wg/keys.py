"""WireGuard keys: X25519 private keys as base64, and the public key of a private one.

Pure apart from the OS random source; never logs or prints a private key itself.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

_RAW = serialization.Encoding.Raw


def generate_private_key() -> str:
    raw = X25519PrivateKey.generate().private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    key = X25519PrivateKey.from_private_bytes(decode(private_key))
    return base64.b64encode(key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)).decode()


def decode(key: str) -> bytes:
    raw = base64.b64decode(key.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes of base64")
    return raw


def to_hex(key: str) -> str:
    return decode(key).hex()


def from_hex(text: str) -> str:
    return base64.b64encode(bytes.fromhex(text)).decode()


def read_key_file(path: str) -> str:
    """The base64 key in ``path`` (first line); ValueError names the file when it is not one."""
    with open(path, encoding="ascii") as handle:
        text = handle.read().strip()
    try:
        decode(text)
    except ValueError:
        raise ValueError(f"{path}: not a WireGuard key (44 characters of base64)") from None
    return text
