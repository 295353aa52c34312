"""Render a ``Ruleset`` as libnftables JSON (what the kernel gets) and as ``nft`` text.

Owns the two spellings of the firewall. The JSON batch is one transaction for table
``inet edge`` only: ``add table`` (so the delete cannot fail on a first apply),
``delete table``, then the full definition, so the kernel takes all of it or none.
Block-list elements handed in are re-added in the same batch, with their remaining
lifetime, so a re-apply never forgets a ban. The text is exactly what
``nft --terse --stateless list table inet edge`` prints for that ruleset (nft 1.0.x),
which makes it both the golden-file format and the plan's diff format;
``normalize_listing`` removes the one thing nft does not keep stable (the order of
anonymous set elements). Pure: no kernel, no files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edge.net.desired import TABLE_FAMILY, TABLE_NAME, Match, Rule, Ruleset, Value

JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Element:
    """One block-list member: ``set_name`` is ``blocklist`` or ``blocklist6``."""

    set_name: str
    address: str
    timeout: int | None = None  # seconds; None = the set's default


# -- text ---------------------------------------------------------------------------------
def format_duration(seconds: int) -> str:
    """nft's spelling: 3600 -> ``1h``, 5400 -> ``1h30m``, 0 -> ``0s``."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _text_value(key: str, value: Value) -> str:
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    if isinstance(value, str) and key in ("iifname", "oifname"):
        return '"' + value.replace('"', '\\"') + '"'
    return str(value)


def _text_match(match: Match) -> str:
    if match.key == "ct state":
        return "ct state " + ",".join(str(v) for v in match.values)
    items = [_text_value(match.key, v) for v in match.values]
    if len(items) == 1:
        return f"{match.key} {items[0]}"
    return f"{match.key} {{ {', '.join(items)} }}"


def rule_text(rule: Rule) -> str:
    words = [_text_match(m) for m in rule.matches]
    if rule.counter:
        words.append("counter")
    if rule.verdict is not None:
        words.append(rule.verdict)
    if rule.comment:
        words.append(f'comment "{rule.comment}"')
    return " ".join(words)


def render_text(ruleset: Ruleset) -> str:
    lines = [f"table {TABLE_FAMILY} {TABLE_NAME} {{"]
    blocks = []
    for s in ruleset.sets:
        blocks.append([f"\tset {s.name} {{", f"\t\ttype {s.type}", f"\t\ttimeout {format_duration(s.timeout)}", "\t}"])
    for chain in ruleset.chains:
        block = [
            f"\tchain {chain.name} {{",
            f"\t\ttype {chain.type} hook {chain.hook} priority {chain.priority}; policy {chain.policy};",
        ]
        block.extend("\t\t" + rule_text(rule) for rule in chain.rules)
        block.append("\t}")
        blocks.append(block)
    for index, block in enumerate(blocks):
        if index:
            lines.append("")
        lines.extend(block)
    lines.append("}")
    return "\n".join(lines) + "\n"


_ANON_SET = re.compile(r"\{ ([^{}]*) \}")


def normalize_listing(text: str) -> str:
    """Sort the members of every one-line anonymous set, strip trailing blanks."""

    def sort_members(match: re.Match) -> str:
        return "{ " + ", ".join(sorted(match.group(1).split(", "))) + " }"

    lines = [_ANON_SET.sub(sort_members, line.rstrip()) for line in text.strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


# -- JSON ---------------------------------------------------------------------------------
_PAYLOAD = {
    "ip saddr": ("ip", "saddr"),
    "ip6 saddr": ("ip6", "saddr"),
    "tcp dport": ("tcp", "dport"),
    "udp dport": ("udp", "dport"),
}
_META = {"iifname": "iifname", "oifname": "oifname", "meta l4proto": "l4proto"}


def _json_left(key: str) -> dict:
    if key in _META:
        return {"meta": {"key": _META[key]}}
    if key in _PAYLOAD:
        protocol, field_name = _PAYLOAD[key]
        return {"payload": {"protocol": protocol, "field": field_name}}
    if key == "ct state":
        return {"ct": {"key": "state"}}
    raise ValueError(f"no JSON spelling for match key {key!r}")


def _json_value(value: Value) -> object:
    if isinstance(value, tuple):
        return {"range": [value[0], value[1]]}
    return value


def _json_match(match: Match) -> dict:
    left = _json_left(match.key)
    if match.key == "ct state":
        values = list(match.values)
        return {"match": {"op": "in", "left": left, "right": values if len(values) > 1 else values[0]}}
    values = [_json_value(v) for v in match.values]
    right = values[0] if len(values) == 1 else {"set": values}
    return {"match": {"op": "==", "left": left, "right": right}}


def _json_rule(chain: str, rule: Rule) -> dict:
    expr: list[dict] = [_json_match(m) for m in rule.matches]
    if rule.counter:
        expr.append({"counter": None})
    if rule.verdict is not None:
        expr.append({rule.verdict: None})
    body: dict = {"family": TABLE_FAMILY, "table": TABLE_NAME, "chain": chain, "expr": expr}
    if rule.comment:
        body["comment"] = rule.comment
    return {"rule": body}


def table_ref() -> dict:
    return {"table": {"family": TABLE_FAMILY, "name": TABLE_NAME}}


def element_command(verb: str, elements: Iterable[Element]) -> list[dict]:
    """``add``/``delete`` element commands, one per set touched."""
    by_set: dict[str, list] = {}
    for element in elements:
        if verb == "add" and element.timeout is not None:
            item: object = {"elem": {"val": element.address, "timeout": max(1, int(element.timeout))}}
        else:
            item = element.address
        by_set.setdefault(element.set_name, []).append(item)
    return [
        {verb: {"element": {"family": TABLE_FAMILY, "table": TABLE_NAME, "name": name, "elem": items}}}
        for name, items in by_set.items()
    ]


def render_batch(ruleset: Ruleset, elements: Iterable[Element] = ()) -> dict:
    """The one transaction that replaces table ``inet edge`` (and nothing else)."""
    commands: list[dict] = [
        {"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
        {"add": table_ref()},
        {"delete": table_ref()},
        {"add": table_ref()},
    ]
    for s in ruleset.sets:
        body = {
            "family": TABLE_FAMILY,
            "table": TABLE_NAME,
            "name": s.name,
            "type": s.type,
            "flags": ["timeout"],
            "timeout": s.timeout,
        }
        commands.append({"add": {"set": body}})
    for chain in ruleset.chains:
        body = {
            "family": TABLE_FAMILY,
            "table": TABLE_NAME,
            "name": chain.name,
            "type": chain.type,
            "hook": chain.hook,
            "prio": 0 if chain.priority == "filter" else 100,
            "policy": chain.policy,
        }
        commands.append({"add": {"chain": body}})
    for chain in ruleset.chains:
        commands.extend({"add": _json_rule(chain.name, rule)} for rule in chain.rules)
    known = {s.name for s in ruleset.sets}
    commands.extend(element_command("add", (e for e in elements if e.set_name in known)))
    return {"nftables": commands}


def render_delete_batch() -> dict:
    """Remove table ``inet edge`` if present (rollback to "edge was never here")."""
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
            {"add": table_ref()},
            {"delete": table_ref()},
        ]
    }


def restore_batch(listing: list[dict], elements: Iterable[Element] | None = None) -> dict:
    """Turn a saved ``nft -j list table inet edge`` back into a replacing transaction.

    Handles and counter values are dropped. Block-list members come from ``elements``
    (the current ones, so a rollback keeps bans made since) or, when None, from the
    listing itself with the lifetime they had left then.
    """
    commands: list[dict] = [
        {"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
        {"add": table_ref()},
        {"delete": table_ref()},
    ]
    sets = set()
    for obj in listing:
        ((kind, body),) = obj.items()
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind == "set":
            sets.add(body["name"])
            if elements is not None:
                body.pop("elem", None)
            elif "elem" in body:
                body["elem"] = [_restore_elem(e) for e in body["elem"]]
        if kind == "rule":
            body["expr"] = [{"counter": None} if "counter" in e else e for e in body["expr"]]
        commands.append({"add": {kind: body}})
    if elements is not None:
        commands.extend(element_command("add", (e for e in elements if e.set_name in sets)))
    return {"nftables": commands}


def _restore_elem(item: object) -> object:
    if isinstance(item, dict) and "elem" in item:
        elem = dict(item["elem"])
        expires = elem.pop("expires", None)
        if expires is not None:
            elem["timeout"] = max(1, int(expires))
        return {"elem": elem}
    return item
