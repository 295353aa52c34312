"""Commit-confirmed: keep or undo the last apply, and the timer that undoes it by itself.

Owns ``undo.json`` and ``pending.json`` in the namespace's ``StateDir``. ``apply --confirm-within``
records how to undo the apply, writes the deadline, and starts a watcher: a new
Python process in its own session (``setsid``, stdio detached from the terminal), so
neither the end of ``edge net apply`` nor a hang-up of the shell or SSH session stops
it. It polls ``pending.json`` until the deadline; ``edge net confirm`` removes that file
(and signals the watcher), otherwise the watcher rolls back under the state lock. It
inherits the network namespace of ``ip netns exec``, and the state path names the
namespace, so namespaces never see each other's pending applies.

Run as ``python -m edge.net.confirm STATE_DIR TOKEN`` (the watcher) only by ``start_watcher``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from edge.net import apply as apply_mod
from edge.net.desired import DesiredNet
from edge.net.state import StateDir

Log = Callable[[str], None]
POLL = 0.2  # seconds between checks of pending.json; a confirm also signals the watcher


class PendingError(RuntimeError):
    pass


def apply_recorded(
    desired: DesiredNet, state: StateDir, confirm_within: float | None = None, log: Log = lambda _m: None
) -> apply_mod.ApplyResult:
    """Apply, remember how to undo it, and (with ``confirm_within``) arm the timer."""
    with state.locked():
        pending = state.read("pending.json")
        if pending is not None and _alive(pending.get("pid")):
            raise PendingError("an apply is waiting for `edge net confirm` (or `edge net rollback`); settle it first")
        managed_before = state.read("applied.json")
        result = apply_mod.apply(desired, state, log)
        token = uuid.uuid4().hex
        if result.undo or confirm_within:
            state.write(
                "undo.json",
                {"token": token, "time": time.time(), "records": list(result.undo), "managed_before": managed_before},
            )
        state.remove("pending.json")
        if confirm_within:
            deadline = time.time() + confirm_within
            state.write("pending.json", {"token": token, "deadline": deadline, "pid": None})
            pid = start_watcher(state, token)
            state.write("pending.json", {"token": token, "deadline": deadline, "pid": pid})
            state.log(f"applied; rolls back at {time.ctime(deadline)} unless confirmed (watcher pid {pid})")
        else:
            state.log("applied")
    return result


def start_watcher(state: StateDir, token: str) -> int:
    import edge

    root = os.path.dirname(os.path.dirname(os.path.abspath(edge.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = open(state.file("log"), "ab")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.net.confirm", state.path, token],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # setsid: no controlling terminal, no SIGHUP when the shell goes
            close_fds=True,
            cwd="/",
            env=env,
        )
    finally:
        log.close()
    return process.pid


def pending(state: StateDir) -> dict | None:
    return state.read("pending.json")


def confirm(state: StateDir) -> str:
    with state.locked():
        current = state.read("pending.json")
        if current is None:
            return "nothing to confirm"
        state.remove("pending.json")
        _signal(current.get("pid"))
        state.log("confirmed")
    return "confirmed: the last apply stays"


def rollback(state: StateDir, log: Log = lambda _m: None, token: str | None = None) -> str:
    """Undo the last apply (``token``: only if it is still that apply)."""
    with state.locked():
        return _rollback_locked(state, log, token)


def _rollback_locked(state: StateDir, log: Log, token: str | None) -> str:
    record = state.read("undo.json")
    current = state.read("pending.json")
    if token is not None and (current is None or current.get("token") != token):
        return "nothing to roll back (confirmed or superseded)"
    if record is None:
        state.remove("pending.json")
        return "nothing to roll back"
    errors = apply_mod.undo(record["records"], log)
    if record.get("managed_before") is None:
        state.remove("applied.json")
    else:
        state.write("applied.json", record["managed_before"])
    state.remove("undo.json")
    state.remove("pending.json")
    if current is not None and token is None:
        _signal(current.get("pid"))
    message = "rolled back the last apply" + (f" ({len(errors)} step(s) failed: {'; '.join(errors)})" if errors else "")
    state.log(message + (" (confirm timer expired)" if token else ""))
    if errors:
        raise apply_mod.ApplyError(message)
    return message


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int | None) -> None:
    if pid and pid != os.getpid():
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def watch(state: StateDir, token: str) -> int:
    """The timer: sleep until the deadline unless confirmed, then roll back."""
    stop = False

    def on_term(_signum, _frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while not stop:
        current = state.read("pending.json")
        if current is None or current.get("token") != token:
            return 0
        remaining = current["deadline"] - time.time()
        if remaining <= 0:
            message = rollback(state, lambda m: state.log(m), token)
            state.log(f"confirm timer: {message}")
            return 0
        time.sleep(min(remaining, POLL))
    return 0


if __name__ == "__main__":  # the detached watcher
    sys.exit(watch(StateDir(sys.argv[1]), sys.argv[2]))
