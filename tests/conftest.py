"""Session-wide test set-up: markers, and the loopback guard for the root namespace."""

from __future__ import annotations

import socket

import pytest

from tests.support import guard


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket.create_connection in tests is checked by the loopback guard."""
    original = socket.create_connection

    def guarded(address, *args, **kwargs):
        guard.check_destination(str(address[0]))
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
