"""Self instructions per request, by library and by function, from a callgrind dump
(bench/tools/fixed_work.sh): ``callgrind_self.py DUMP REQUESTS [TOP]``."""

from __future__ import annotations

import collections
import re
import sys

_NAMED = re.compile(r"\((\d+)\)(?: (.*))?")
_BASE = {"cfn": "fn", "cob": "ob", "cfi": "fl", "cfl": "fl", "fi": "fl", "fe": "fl"}


def self_costs(path: str) -> tuple[collections.Counter, collections.Counter, int]:
    """(by function, by object file, total) of the dump's self cost (name compression aware)."""
    names: dict[str, dict[str, str]] = collections.defaultdict(dict)

    def resolve(kind: str, value: str) -> str:
        table = names[_BASE.get(kind, kind)]
        match = _NAMED.match(value)
        if not match:
            return value
        if match.group(2) is not None:
            table[match.group(1)] = match.group(2)
        return table.get(match.group(1), value)

    by_function: collections.Counter = collections.Counter()
    by_object: collections.Counter = collections.Counter()
    total = 0
    function = obj = ""
    skip_next = False
    with open(path) as dump:
        for line in dump:
            line = line.rstrip("\n")
            if not line:
                continue
            if line[0].isdigit() or line[0] in "+-*":
                if skip_next:  # the cost line of a call: inclusive, not self
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    cost = int(parts[1])
                    by_function[function] += cost
                    by_object[obj] += cost
                    total += cost
                continue
            key, _, value = line.partition("=")
            if key == "fn":
                function = resolve("fn", value)
            elif key == "ob":
                obj = resolve("ob", value)
            elif key in _BASE:
                resolve(key, value)
            elif key == "calls":
                skip_next = True
    return by_function, by_object, total


def main() -> None:
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    by_function, by_object, total = self_costs(path)
    print(f"total {total:,}  per request {total / requests:,.0f}")
    for name, cost in by_object.most_common(8):
        print(f"{cost / requests:10,.0f} {100 * cost / total:5.1f}%  {name}")
    print()
    for name, cost in by_function.most_common(top):
        print(f"{cost / requests:10,.0f} {100 * cost / total:5.1f}%  {name.split('/')[-1][:100]}")


if __name__ == "__main__":
    main()
