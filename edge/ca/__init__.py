"""edge's internal CA for LAN names: a root devices import once, and short-lived leaves it signs."""

from edge.ca.authority import (
    DEFAULT_LEAF_DAYS,
    MAX_LEAF_DAYS,
    ROOT_CERT,
    ROOT_DER,
    ROOT_KEY,
    Authority,
    BadName,
    CaError,
    Leaf,
    ensure_ca,
    ensure_demo_pki,
    ensure_leaf,
    init_ca,
    issue_leaf,
    load_ca,
)
from edge.ca.listener import InternalError, ensure_internal

__all__ = [
    "DEFAULT_LEAF_DAYS",
    "MAX_LEAF_DAYS",
    "ROOT_CERT",
    "ROOT_DER",
    "ROOT_KEY",
    "Authority",
    "BadName",
    "CaError",
    "InternalError",
    "Leaf",
    "ensure_ca",
    "ensure_demo_pki",
    "ensure_internal",
    "ensure_leaf",
    "init_ca",
    "issue_leaf",
    "load_ca",
]
