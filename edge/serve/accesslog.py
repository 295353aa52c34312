"""The JSON access log: records queued as tuples on the hot path, formatted and written in batches.

A request costs one tuple and one list append; every ``FLUSH_INTERVAL`` (or when the
queue reaches ``FLUSH_AT``) the batch is formatted to JSON lines and written with one
``write``. Strings are escaped only when they need it (the common case is plain
ASCII). ``reopen()`` supports logrotate (called on SIGHUP).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time

__all__ = ["AccessLog"]

FLUSH_INTERVAL = 0.2
FLUSH_AT = 256  # formatting a batch stalls the loop: 256 records is ~0.5 ms, a p99 we can live with
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\uffff]')


def _s(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:
        return '"' + value + '"'
    return json.dumps(value)


class AccessLog:
    """Queue on the hot path; format and write off it."""

    def __init__(self, path: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = path
        self.queue: list[tuple] = []
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._escape_cache: dict[str | bytes | None, str] = {}
        self._text_cache: dict[str | bytes | None, str] = {}
        self._open()

    def _open(self) -> None:
        if not self.enabled:
            return
        if self.path == "-":
            self._fd = sys.stdout.fileno()
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def reopen(self) -> None:
        """Close and reopen the file (after logrotate moved it)."""
        self.flush()
        if self._fd >= 0 and self.path != "-":
            os.close(self._fd)
        self._fd = -1
        self._open()

    def configure(self, path: str, enabled: bool) -> None:
        if path != self.path or enabled != self.enabled:
            self.flush()
            if self._fd >= 0 and self.path != "-":
                os.close(self._fd)
            self._fd = -1
            self.path, self.enabled = path, enabled
            self._open()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def log(self, record: tuple) -> None:
        """record: (wall_time, client, host, method, path, status, bytes, duration, upstream, route, tier, cache);
        host, method and path as str or bytes (latin-1)."""
        queue = self.queue
        queue.append(record)
        if len(queue) == 1 and self._loop is not None:
            self._handle = self._loop.call_later(FLUSH_INTERVAL, self.flush)
        elif len(queue) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        queue = self.queue
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not queue:
            return
        self.queue = []
        if self._fd < 0:
            return
        lines = []
        add = lines.append
        escaped = self._escape_cache
        escape = self._escaped
        texts = self._text_cache
        text = self._text
        last_second = -1
        prefix = ""
        for wall, client, host, method, path, status, size, duration, upstream, route, *features in queue:
            tier, cache = features if features else (None, None)
            second = int(wall)
            if second != last_second:  # one strftime per second of records, not one per record
                last_second = second
                prefix = time.strftime('{"time":"%Y-%m-%dT%H:%M:%S', time.gmtime(second))
            add(
                # client is an IP, method a token, host matched edge's Host grammar: no escaping needed.
                # host, method and path come as bytes (HTTP/1.1) or str (HTTP/2); repeated values
                # are decoded and escaped once (the caches; a miss calls _text / _escaped)
                f'{prefix}.{int(wall * 1000) % 1000:03d}Z","client":"{client}",'
                f'"host":"{texts.get(host) or text(host)}","method":"{texts.get(method) or text(method)}",'
                f'"path":{escaped.get(path) or escape(path)},'
                f'"status":{status},"bytes":{size},"duration":{duration:.6f},'
                f'"upstream":{escaped.get(upstream) or escape(upstream)},"route":{escaped.get(route) or escape(route)}'
                + (f',"tier":{escaped.get(tier) or escape(tier)}' if tier is not None else "")
                + (f',"cache":"{cache}"' if cache is not None else "")
                + "}\n"
            )
        data = "".join(lines).encode("utf-8", "replace")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BlockingIOError:
            pass  # a full pipe on stdout: drop the rest rather than block the loop
        except OSError:
            pass

    def _escaped(self, value: str | bytes | None) -> str:
        """JSON strings for paths, route labels and upstream names: they repeat, so cached."""
        found = self._escape_cache.get(value)
        if found is None:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            found = "null" if text is None else _s(text)
            if len(self._escape_cache) > 1024:
                self._escape_cache.clear()
            self._escape_cache[value] = found
        return found

    def _text(self, value: str | bytes | None) -> str:
        """Host and method as they go in the line (checked tokens: never escaped), cached."""
        found = self._text_cache.get(value)
        if found is None:
            found = "" if value is None else value.decode("latin-1") if isinstance(value, bytes) else value
            if len(self._text_cache) > 1024:
                self._text_cache.clear()
            self._text_cache[value] = found
        return found

    def close(self) -> None:
        self.flush()
        if self._fd >= 0 and self.path != "-":
            os.close(self._fd)
        self._fd = -1
