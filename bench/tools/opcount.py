"""``edge`` with a bytecode counter: SIGUSR1 starts counting, SIGUSR2 writes per function
"bytecodes calls file:line:function" to $EDGE_OPS_OUT (bench/tools/fixed_work.sh ... ops)."""

from __future__ import annotations

import collections
import os
import signal
import sys

from edge.cli import main

ops: collections.Counter = collections.Counter()
calls: collections.Counter = collections.Counter()


def _tracer(frame, event, arg):
    code = frame.f_code
    key = (code.co_filename, code.co_firstlineno, code.co_name)
    calls[key] += 1
    frame.f_trace_opcodes = True

    def local(frame, event, arg, key=key):
        if event == "opcode":
            ops[key] += 1
        return local

    return local


def _start(*_) -> None:
    sys.settrace(_tracer)


def _stop(*_) -> None:
    sys.settrace(None)
    with open(os.environ["EDGE_OPS_OUT"], "w") as out:
        for key, count in ops.most_common():
            out.write(f"{count}\t{calls[key]}\t{key[0]}:{key[1]}:{key[2]}\n")
        out.write(f"TOTAL\t{sum(ops.values())}\t{sum(calls.values())}\n")


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.argv[0] = "edge"
    sys.exit(main())
