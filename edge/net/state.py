"""Per-namespace controller state under ``/run/edge/<netns>/``.

``<netns>`` is the inode of ``/proc/self/ns/net``, so ``ip netns exec NS edge net ...``
and a daemon in that namespace find the same files, and namespaces never share them.
Files: ``applied.json`` (what edge created: links, addresses), ``undo.json`` (how to
undo the last apply), ``pending.json`` (a commit-confirmed apply waiting for
``edge net confirm``), ``lock`` (flock: one apply/rollback/confirm at a time), ``log``.
``EDGE_NET_STATE_DIR`` overrides the base directory (tests, non-root plans).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

BASE_DIR = "/run/edge"


def netns_id() -> str:
    return str(os.stat("/proc/self/ns/net").st_ino)


class StateDir:
    def __init__(self, path: str | None = None) -> None:
        base = os.environ.get("EDGE_NET_STATE_DIR") or BASE_DIR
        self.path = path or os.path.join(base, netns_id())

    def ensure(self) -> StateDir:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        return self

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def read(self, name: str) -> dict | None:
        try:
            with open(self.file(name), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    def write(self, name: str, data: dict) -> None:
        self.ensure()
        tmp = self.file(f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.file(name))

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file(name))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.ensure()
        fd = os.open(self.file("lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def log(self, message: str) -> None:
        self.ensure()
        with open(self.file("log"), "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
