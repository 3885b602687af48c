"""Frozen dataclasses ⇄ JSON, and their JSON Schema, from the type hints alone.

``to_json`` turns a dataclass tree into JSON-ready dicts/lists; ``from_json`` reads one back,
checking every field's type against the hints and naming the offending field (``where`` +
dotted path) in the error; ``json_schema`` writes the same hints as a JSON Schema (draft
2020-12) so that other tools can read the files cmrt writes. Supported hints: dataclasses,
``int``, ``float``, ``str``, ``bool``, ``None``, ``X | Y``, ``tuple[X, ...]``, ``dict[str, X]``,
``Literal[...]`` and ``Any``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Literal

_JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"


class TypedJsonError(ValueError):
    """A JSON value does not fit the dataclass it is read into (``path``: where)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def to_json(obj: Any) -> Any:
    """A dataclass tree as JSON-ready values (tuples become lists; non-finite floats become None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def from_json(cls: Any, data: Any, path: str = "") -> Any:
    """Read ``data`` as type ``cls``; raises ``TypedJsonError`` naming the first bad field."""
    if cls is Any:
        return data
    if dataclasses.is_dataclass(cls):
        return _dataclass_from_json(cls, data, path)
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if _is_union(cls):
        errors = []
        for option in args:
            try:
                return from_json(option, data, path)
            except TypedJsonError as exc:
                errors.append(exc)
        raise TypedJsonError(path, f"expected {_describe(cls)}, got {_got(data)}")
    if origin is Literal:
        if data not in args:
            raise TypedJsonError(path, f"expected one of {list(args)}, got {data!r}")
        return data
    if origin is tuple:
        if not isinstance(data, list):
            raise TypedJsonError(path, f"expected a list, got {_got(data)}")
        item = args[0]
        return tuple(from_json(item, v, f"{path}[{i}]") for i, v in enumerate(data))
    if origin is dict:
        if not isinstance(data, dict):
            raise TypedJsonError(path, f"expected an object, got {_got(data)}")
        return {k: from_json(args[1], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return _scalar(cls, data, path)


def _scalar(cls: Any, data: Any, path: str) -> Any:
    if cls is type(None):
        if data is not None:
            raise TypedJsonError(path, f"expected null, got {_got(data)}")
        return None
    if cls is bool:
        if not isinstance(data, bool):
            raise TypedJsonError(path, f"expected true or false, got {_got(data)}")
        return data
    if cls is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise TypedJsonError(path, f"expected an integer, got {_got(data)}")
        return data
    if cls is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise TypedJsonError(path, f"expected a number, got {_got(data)}")
        return float(data)
    if cls is str:
        if not isinstance(data, str):
            raise TypedJsonError(path, f"expected a string, got {_got(data)}")
        return data
    raise TypeError(f"unsupported type hint {cls!r} at {path}")


def _dataclass_from_json(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise TypedJsonError(path or cls.__name__, f"expected an object, got {_got(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TypedJsonError(path or cls.__name__, f"unknown fields {unknown}")
    values = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            values[name] = from_json(hints[name], data[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypedJsonError(sub, "is missing")
    return cls(**values)


def _describe(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, str(tp))


def _got(data: Any) -> str:
    text = repr(data)
    return f"{type(data).__name__} {text[:60] + '…' if len(text) > 60 else text}"


# --- JSON Schema --------------------------------------------------------------------------
def json_schema(cls: type, *, title: str, description: str = "",
                field_docs: Callable[[type, str], str | None] | None = None) -> dict:
    """A JSON Schema (draft 2020-12) of dataclass ``cls``: every nested dataclass in ``$defs``.

    Args:
        cls: the root dataclass.
        title, description: the schema's title and description.
        field_docs: optional (dataclass, field name) → description.
    """
    defs: dict[str, dict] = {}
    root = _schema_of(cls, defs, field_docs)
    schema = {"$schema": _JSON_SCHEMA, "title": title}
    if description:
        schema["description"] = description
    return schema | root | {"$defs": dict(sorted(defs.items()))}


def _schema_of(tp: Any, defs: dict[str, dict], docs) -> dict:
    if tp is Any:
        return {}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # reserve (recursion)
            defs[name] = _dataclass_schema(tp, defs, docs)
        return {"$ref": f"#/$defs/{name}"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        return {"anyOf": [_schema_of(a, defs, docs) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": _schema_of(args[0], defs, docs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1], defs, docs)}
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"unsupported type hint {tp!r}")


def _dataclass_schema(cls: type, defs: dict[str, dict], docs) -> dict:
    hints = _hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        prop = _schema_of(hints[f.name], defs, docs)
        doc = docs(cls, f.name) if docs else None
        if doc:
            prop = {"description": doc} | prop
        props[f.name] = prop
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    doc = (cls.__doc__ or "").strip().splitlines()
    return ({"description": doc[0]} if doc else {}) | out


def field_docs_from_docstrings(cls: type, name: str) -> str | None:
    """Field descriptions from a Google-style ``Attributes:`` section of the dataclass docstring."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return None
    lines = doc.split("Attributes:", 1)[1].splitlines()
    text, found = [], False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if found:
                break
            continue
        head = stripped.split(":", 1)
        if len(head) == 2 and head[0].isidentifier() and line.startswith("        ") and not line.startswith("         "):
            if found:
                break
            if head[0] == name:
                found = True
                text.append(head[1].strip())
            continue
        if found:
            text.append(stripped)
    return " ".join(text) or None
