"""The one door to libnftables: run a JSON batch, list table ``inet edge``, add elements.

Owns the ``nftables.Nftables`` context (one per process; it is cheap to reuse and
costly to create). Errors come back as ``NftError`` with libnftables' own message.
Never lists or touches any table but ``inet edge``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from edge.net import render
from edge.net.desired import TABLE_FAMILY, TABLE_NAME


class NftError(RuntimeError):
    pass


_CTX = None


def _ctx():
    global _CTX
    if _CTX is None:
        try:
            import nftables
        except ImportError as exc:  # pragma: no cover - scripts/setup links it into the venv
            raise NftError(f"the libnftables Python binding is missing ({exc}); install python3-nftables") from None
        _CTX = nftables.Nftables()
    return _CTX


def run_batch(batch: dict) -> None:
    """One transaction: the kernel takes all of it or none."""
    ctx = _ctx()
    rc, _output, error = ctx.json_cmd(batch)
    if rc != 0:
        raise NftError((error or "nft: unknown error").strip())


def list_table_json() -> list[dict] | None:
    """The table as nft JSON objects (metainfo dropped), or None when it does not exist."""
    ctx = _ctx()
    rc, output, error = ctx.json_cmd({"nftables": [{"list": render.table_ref()}]})
    if rc != 0:
        if "No such file or directory" in (error or ""):
            return None
        raise NftError((error or "nft: unknown error").strip())
    objects = output["nftables"] if isinstance(output, dict) else json.loads(output)["nftables"]
    return [o for o in objects if "metainfo" not in o]


def list_table_text() -> str | None:
    """``nft --terse --stateless list table inet edge``: comparable with render_text()."""
    ctx = _ctx()
    ctx.set_terse_output(True)
    ctx.set_stateless_output(True)
    try:
        rc, output, error = ctx.cmd(f"list table {TABLE_FAMILY} {TABLE_NAME}")
    finally:
        ctx.set_terse_output(False)
        ctx.set_stateless_output(False)
    if rc != 0:
        if "No such file or directory" in (error or ""):
            return None
        raise NftError((error or "nft: unknown error").strip())
    return output


def update_elements(verb: str, elements: Iterable[render.Element]) -> None:
    """The cheap path: add or delete block-list members without touching the rules."""
    commands = render.element_command(verb, elements)
    if commands:
        run_batch({"nftables": commands})


def blocklist_elements(listing: list[dict] | None) -> list[render.Element]:
    """Members of the block-list sets in a listing, with their remaining lifetime."""
    out = []
    for obj in listing or ():
        body = obj.get("set")
        if not body or body.get("name") not in ("blocklist", "blocklist6"):
            continue
        for item in body.get("elem", ()):
            if isinstance(item, dict) and "elem" in item:
                elem = item["elem"]
                remaining = elem.get("expires", elem.get("timeout"))
                timeout = max(1, int(remaining)) if remaining is not None else None
                out.append(render.Element(body["name"], str(elem["val"]), timeout))
            else:
                out.append(render.Element(body["name"], str(item), None))
    return out
