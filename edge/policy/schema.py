"""Typed YAML -> frozen dataclass conversion that remembers where every key was.

The policy models (``model.py``) are plain frozen dataclasses whose field types say
how a YAML value is read: ``int``, ``str``, ``bool``, ``float``, ``Literal[...]``,
``tuple[T, ...]``, ``dict[str, T]``, ``T | None``, nested dataclasses, and
``Annotated[T, Parse(fn)]`` for units and other small grammars. This module walks
the composed YAML node tree (not the constructed Python objects) so that every
error can name the file, the line and the dotted key, and unknown keys are errors
with a "did you mean" hint. It collects every error instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "FieldError",
    "Loader",
    "Parse",
    "PolicyError",
    "PolicyErrors",
    "did_you_mean",
    "key_of",
]


@dataclass(frozen=True, slots=True)
class PolicyError:
    """One problem in a policy file, printed as ``file:line: key: message``."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyErrors(Exception):
    """Raised with every problem found, so a user fixes them in one go."""

    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class FieldError(ValueError):
    """Raised by a model's ``__post_init__`` to blame one of its keys."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)


@dataclass(frozen=True, slots=True)
class Parse:
    """Field annotation: read the plain Python value with ``fn`` (raise ValueError to reject)."""

    fn: Callable[[Any], Any]
    single_to_list: bool = False


def key_of(field: dataclasses.Field) -> str:
    """The YAML key of a dataclass field (``from_`` is spelt ``from``)."""
    return field.metadata.get("key", field.name.rstrip("_"))


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_constructor = yaml.SafeLoader("")  # only its scalar constructor is used


def _plain(node: yaml.Node) -> Any:
    """Construct the plain Python value of a node (for Parse fields and scalars)."""
    return _constructor.construct_object(node, deep=True)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class Loader:
    """Converts one composed YAML document into a model; collects errors and key lines."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[PolicyError] = []
        self.lines: dict[str, int] = {}

    # -- error helpers -------------------------------------------------------------------
    def error(self, line: int, key: str, message: str) -> None:
        self.errors.append(PolicyError(self.file, line, key, message))

    def error_at(self, key: str, message: str) -> None:
        """An error found after loading (cross references), placed by the key's line."""
        line = self.lines.get(key)
        probe = key
        while line is None and probe:
            probe = probe.rpartition(".")[0] if "." in probe else probe.rpartition("[")[0]
            line = self.lines.get(probe)
        self.error(line or 0, key, message)

    # -- conversion ------------------------------------------------------------------------
    def load(self, cls: type, node: yaml.Node, path: str = "") -> Any:
        self.lines[path] = _line(node)
        return self._convert(cls, node, path)

    def _convert(self, tp: Any, node: yaml.Node, path: str) -> Any:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            base, *extras = get_args(tp)
            parse = next((e for e in extras if isinstance(e, Parse)), None)
            if parse is None:
                return self._convert(base, node, path)
            if parse.single_to_list and not isinstance(node, yaml.SequenceNode):
                value: Any = [_plain(node)]
            else:
                value = _plain(node)
            try:
                return parse.fn(value)
            except (ValueError, TypeError) as exc:
                self.error(_line(node), path, str(exc))
                return _INVALID
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if _is_null(node):
                return None
            if len(args) == 1:
                return self._convert(args[0], node, path)
            raise TypeError(f"unsupported union {tp!r}")  # a model bug, not a user error
        if _is_null(node):
            self.error(_line(node), path, "must not be empty")
            return _INVALID
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, node, path)
        if origin is tuple:
            (item,) = [a for a in get_args(tp) if a is not Ellipsis]
            if not isinstance(node, yaml.SequenceNode):
                self.error(_line(node), path, "expected a list")
                return _INVALID
            out = []
            for index, child in enumerate(node.value):
                child_path = f"{path}[{index}]"
                self.lines[child_path] = _line(child)
                out.append(self._convert(item, child, child_path))
            return tuple(out)
        if origin is dict:
            _, item = get_args(tp)
            if not isinstance(node, yaml.MappingNode):
                self.error(_line(node), path, "expected a mapping")
                return _INVALID
            out_map: dict[str, Any] = {}
            for key_node, child in node.value:
                key = _plain(key_node)
                child_path = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str) or not key:
                    self.error(_line(key_node), path, f"key {key!r} must be a non-empty string")
                    continue
                if key in out_map:
                    self.error(_line(key_node), child_path, "duplicate key")
                    continue
                self.lines[child_path] = _line(child)
                out_map[key] = self._convert(item, child, child_path)
            return out_map
        if origin is Literal:
            choices = get_args(tp)
            value = _plain(node) if isinstance(node, yaml.ScalarNode) else None
            if value not in choices:
                shown = " | ".join(str(c) for c in choices)
                hint = did_you_mean(str(value), [str(c) for c in choices])
                self.error(_line(node), path, f"must be one of {shown}, got {value!r}{hint}")
                return _INVALID
            return value
        if tp in (str, int, float, bool):
            value = _plain(node) if isinstance(node, yaml.ScalarNode) else node
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not tp:
                self.error(_line(node), path, f"expected {_TYPE_NAMES[tp]}, got {_show(value)}")
                return _INVALID
            return value
        raise TypeError(f"unsupported field type {tp!r}")

    def _dataclass(self, cls: type, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.error(_line(node), path, f"expected a mapping, got {_show(_plain(node))}")
            return _INVALID
        hints = _hints(cls)
        fields = {key_of(f): f for f in dataclasses.fields(cls) if f.init}
        seen: dict[str, Any] = {}
        for key_node, child in node.value:
            key = _plain(key_node)
            child_path = f"{path}.{key}" if path else str(key)
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                self.error(_line(key_node), child_path, f"unknown key{did_you_mean(str(key), fields)}")
                continue
            if key in seen:
                self.error(_line(key_node), child_path, "duplicate key")
                continue
            self.lines[child_path] = _line(child)
            seen[field.name] = self._convert(hints[field.name], child, child_path)
        for key, field in fields.items():
            if field.name in seen:
                continue
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                where = f"{path}.{key}" if path else key
                self.error(_line(node), where, "is required")
                seen[field.name] = _INVALID
        if any(v is _INVALID for v in seen.values()):
            return _INVALID
        try:
            return cls(**seen)
        except (ValueError, TypeError) as exc:  # __post_init__ checks of one object
            if len(exc.args) == 2:  # FieldError(key, message): point at that key
                key, message = exc.args
                where = f"{path}.{key}" if path else key
                self.error(self.lines.get(where, _line(node)), where, message)
            else:
                self.error(_line(node), path, str(exc))
            return _INVALID


class _Invalid:
    """Marks a value that already produced an error, so parents do not pile on."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls, include_extras=True)
    return hints


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _show(value: Any) -> str:
    if isinstance(value, yaml.MappingNode):
        return "a mapping"
    if isinstance(value, yaml.SequenceNode):
        return "a list"
    return repr(value)


def is_invalid(value: Any) -> bool:
    return value is _INVALID
