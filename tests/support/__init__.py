"""Shared test helpers: privileged-test gating, the loopback-only guard, processes."""
