"""Gate tests that need root, network namespaces, nft or wireguard-go.

On a laptop they skip with the reason; with EDGE_REQUIRE_PRIVILEGED=1 (CI) a missing
prerequisite fails the test instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("EDGE_REQUIRE_PRIVILEGED") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) unless ``condition`` holds."""
    if condition:
        return
    if REQUIRED:
        pytest.fail(f"EDGE_REQUIRE_PRIVILEGED=1 but {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"needs {name} on PATH (scripts/setup installs it)")


def require_netns() -> None:
    require_root()
    require_tool("ip")
    require(os.path.isdir("/proc/self/ns") and os.path.exists("/proc/self/ns/net"), "needs network namespaces")
