"""Serializers for function results, and the canonical form of call arguments (SPEC 28, 29).

A result is stored as bytes and must come back *exactly*: ``0``, ``""``, ``[]``, ``False`` and
``None`` stay distinct, a tuple stays a tuple, an aware datetime keeps its zone, a dataclass
comes back as that dataclass. The default :class:`TaggedJSON` codec does this with stdlib
``json`` and a small, closed set of tags.

Why not msgspec or pydantic's ``TypeAdapter``? Both decode *by type*: they need the exact
result type to rebuild a tuple, a datetime or a dataclass, and the annotations agent tools
carry are ``dict``, ``Any`` or nothing - a datetime nested in a ``dict`` would silently come
back as a string. A self-describing format round-trips without annotations, so it is the
default; Pydantic models still go through pydantic's own ``model_dump``/``model_validate``.
Any object with ``media_type``, ``dumps`` and ``loads`` can replace it (see docs/tools.md).

The format: JSON ``null``, booleans, finite numbers, strings and arrays are themselves; every
other value is a one-member object whose name is a ``$tag``::

    {"$dict": {"a": 1}}          {"$map": [[1, "x"]]}       {"$tuple": [1, 2]}
    {"$bytes": "AAE="}           {"$decimal": "1.10"}       {"$uuid": "..."}
    {"$datetime": ["2026-01-01T09:00:00", ["zone", "Europe/Paris"], 0]}
    {"$dataclass": ["pkg.mod:Receipt", {"$dict": {...}}]}  {"$enum": ["pkg.mod:Color", "RED"]}

Classes are named by ``module:qualname`` and resolved on decode only if they are still a
dataclass, ``Enum`` or pydantic model (never an arbitrary callable); the store is trusted as
the application's own database is.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import json
import math
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from retrysafe.errors import SerializationError

MEDIA_TYPE = "application/vnd.retrysafe.tagged+json"
# RFC 8785 numbers are IEEE doubles: ints beyond the safe range (|n| <= 2**53 - 1, where every
# int is exact and no two share a double) are tagged strings; rfc8785 refuses 2**53 itself.
_JCS_MAX_INT = 2**53 - 1
Json = Any  # a JSON tree: None, bool, int, float, str, list, dict[str, Json]


@runtime_checkable
class Serializer(Protocol):
    """What ``@idempotent(serializer=...)`` needs: bytes out, the same value back."""

    media_type: str

    def dumps(self, value: object) -> bytes: ...
    def loads(self, data: bytes) -> object: ...


# -- encoding -------------------------------------------------------------------------------


def _class_path(cls: type) -> str:
    if "<locals>" in cls.__qualname__:
        raise SerializationError(
            f"{cls.__qualname__} is defined inside a function, so it cannot be found again "
            "when the result is replayed; define it at module level"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _tz(tz: dt.tzinfo | None, offset: dt.timedelta | None) -> Json:
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo) and tz.key is not None:
        return ["zone", tz.key]
    if isinstance(tz, dt.timezone):
        args = tz.__getinitargs__()  # type: ignore[attr-defined]
        delta: dt.timedelta = args[0]
        name = args[1] if len(args) > 1 else None
        return ["offset", delta.days, delta.seconds, delta.microseconds, name]
    if offset is None:
        raise SerializationError(f"time zone {tz!r} has no fixed UTC offset to store")
    # Other tzinfo implementations (pytz, dateutil) are kept as their fixed offset.
    return ["offset", offset.days, offset.seconds, offset.microseconds, None]


class _Encoder:
    """Walks a value into a JSON tree; ``canonical`` makes equal arguments give equal trees."""

    def __init__(self, canonical: bool) -> None:
        self.canonical = canonical

    def encode(self, value: object) -> Json:
        if isinstance(value, enum.Enum):  # before int/str: IntEnum and StrEnum members
            return {"$enum": [_class_path(type(value)), value.name]}
        if value is None or type(value) in (bool, str):
            return value
        if type(value) is int:
            if self.canonical and abs(value) > _JCS_MAX_INT:
                return {"$int": str(value)}
            return value
        if type(value) is float:
            if math.isfinite(value):
                return value
            return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if type(value) is list:
            return [self.encode(v) for v in value]
        if type(value) is tuple:
            return {"$tuple": [self.encode(v) for v in value]}
        if type(value) is dict:
            return self._dict(value)
        if type(value) in (set, frozenset):
            items = [self.encode(v) for v in value]  # type: ignore[attr-defined]
            if self.canonical:
                items.sort(key=_jcs)
            return {f"${type(value).__name__}": items}
        if type(value) in (bytes, bytearray):
            return {f"${type(value).__name__}": base64.b64encode(value).decode("ascii")}  # type: ignore[arg-type]
        if type(value) is dt.datetime:
            return {"$datetime": self._wall(value, value.utcoffset())}
        if type(value) is dt.date:
            return {"$date": value.isoformat()}
        if type(value) is dt.time:
            return {"$time": self._wall(value, value.utcoffset())}
        if type(value) is dt.timedelta:
            return {"$timedelta": [value.days, value.seconds, value.microseconds]}
        if type(value) is decimal.Decimal:
            return {"$decimal": str(value)}
        if type(value) is uuid.UUID:
            return {"$uuid": str(value)}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return {"$dataclass": [_class_path(type(value)), self._dict(fields)]}
        if _is_pydantic(type(value)):
            dumped = value.model_dump(mode="python", round_trip=True)  # type: ignore[attr-defined]
            return {"$pydantic": [_class_path(type(value)), self.encode(dumped)]}
        raise SerializationError(
            f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__}: "
            "return (or pass) plain data, dataclasses, Enums or Pydantic models, "
            "or give @idempotent a serializer= that knows this type"
        )

    def _dict(self, value: dict[Any, Any]) -> Json:
        if all(type(k) is str for k in value):
            return {"$dict": {k: self.encode(v) for k, v in value.items()}}
        pairs = [[self.encode(k), self.encode(v)] for k, v in value.items()]
        if self.canonical:
            pairs.sort(key=lambda kv: _jcs(kv[0]))
        return {"$map": pairs}

    def _wall(self, value: dt.datetime | dt.time, offset: dt.timedelta | None) -> Json:
        # Wall-clock time + zone + fold rebuilds even ambiguous and imaginary local times.
        naive = value.replace(tzinfo=None, fold=0).isoformat()
        return [naive, _tz(value.tzinfo, offset), value.fold]


def _jcs(tree: Json) -> bytes:
    import rfc8785

    return bytes(rfc8785.dumps(tree))


def _is_pydantic(cls: type) -> bool:
    # Never import pydantic ourselves: a model can only exist if the user imported it.
    return any(
        c.__module__ == "pydantic.main" and c.__name__ == "BaseModel" for c in cls.__mro__[1:]
    )


# -- decoding -------------------------------------------------------------------------------


def _resolve(path: str, check: Callable[[type], bool], kind: str) -> type:
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SerializationError(f"stored {kind} class {path} no longer exists: {exc}") from exc
    if not isinstance(obj, type) or not check(obj):
        raise SerializationError(f"stored class {path} is not a {kind}; refusing to build it")
    return obj


def _untz(spec: Json) -> dt.tzinfo | None:
    if spec is None:
        return None
    if spec[0] == "zone":
        return ZoneInfo(spec[1])
    delta = dt.timedelta(spec[1], spec[2], spec[3])
    return dt.timezone(delta) if spec[4] is None else dt.timezone(delta, spec[4])


def _decode(tree: Json) -> object:
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, list):
        return [_decode(v) for v in tree]
    if not isinstance(tree, dict) or len(tree) != 1:
        raise SerializationError(f"not a tagged value: {tree!r:.80}")
    ((tag, payload),) = tree.items()
    match tag:
        case "$dict":
            return {k: _decode(v) for k, v in payload.items()}
        case "$map":
            return {_decode(k): _decode(v) for k, v in payload}
        case "$tuple":
            return tuple(_decode(v) for v in payload)
        case "$set":
            return {_decode(v) for v in payload}
        case "$frozenset":
            return frozenset(_decode(v) for v in payload)
        case "$bytes":
            return base64.b64decode(payload)
        case "$bytearray":
            return bytearray(base64.b64decode(payload))
        case "$int":
            return int(payload)
        case "$float":
            return float(payload)
        case "$datetime":
            wall, tz, fold = payload
            return dt.datetime.fromisoformat(wall).replace(tzinfo=_untz(tz), fold=fold)
        case "$date":
            return dt.date.fromisoformat(payload)
        case "$time":
            wall, tz, fold = payload
            return dt.time.fromisoformat(wall).replace(tzinfo=_untz(tz), fold=fold)
        case "$timedelta":
            return dt.timedelta(*payload)
        case "$decimal":
            return decimal.Decimal(payload)
        case "$uuid":
            return uuid.UUID(payload)
        case "$enum":
            cls: Any = _resolve(payload[0], lambda c: issubclass(c, enum.Enum), "Enum")
            return cls[payload[1]]
        case "$dataclass":
            cls = _resolve(payload[0], dataclasses.is_dataclass, "dataclass")
            fields: Any = _decode(payload[1])
            # Rebuild the state without calling __init__/__post_init__ again (as pickle does):
            # the stored fields are already the result of running them once.
            obj = cls.__new__(cls)
            for name, value in fields.items():
                object.__setattr__(obj, name, value)
            return obj
        case "$pydantic":
            cls = _resolve(payload[0], _is_pydantic, "Pydantic model")
            return cls.model_validate(_decode(payload[1]))
    raise SerializationError(f"unknown tag {tag!r} in a stored value")


# -- the serializer and the canonical argument form -----------------------------------------


class TaggedJSON:
    """The default serializer: exact round trips of plain data and common value types."""

    media_type = MEDIA_TYPE

    def dumps(self, value: object) -> bytes:
        tree = _Encoder(canonical=False).encode(value)
        return json.dumps(tree, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def loads(self, data: bytes) -> object:
        try:
            return _decode(json.loads(data))
        except SerializationError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise SerializationError(f"stored result is not tagged JSON: {exc!r}") from exc

    def check_type(self, tp: object) -> None:
        """Raise :class:`SerializationError` if values of annotation ``tp`` cannot be stored.

        Used by ``validate_return`` to fail *before* the function runs. Only concrete classes
        that certainly cannot be stored are refused; ``Any``, protocols and ABCs pass.
        """
        _check_annotation(tp)


_PLAIN: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    bytearray,
    list,
    tuple,
    dict,
    set,
    frozenset,
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    decimal.Decimal,
    uuid.UUID,
)


def _check_annotation(tp: object) -> None:
    origin = typing.get_origin(tp)
    if origin is not None:  # list[X], dict[K, V], X | Y, Optional[X], Annotated[X, ...]
        if origin is typing.Annotated:
            _check_annotation(typing.get_args(tp)[0])
            return
        if origin in (typing.Union, types.UnionType) or origin in _PLAIN:
            for arg in typing.get_args(tp):
                if arg is not Ellipsis:
                    _check_annotation(arg)
            return
        if origin is typing.Literal:
            return
        tp = origin
    if tp is None or tp is typing.Any or tp is object or not isinstance(tp, type):
        return  # Any, TypeVars, strings we could not resolve: nothing certain to say
    if tp in _PLAIN or issubclass(tp, enum.Enum) or _is_pydantic(tp):
        return
    if dataclasses.is_dataclass(tp):
        _class_path(tp)
        return
    if getattr(tp, "__abstractmethods__", None) or getattr(tp, "_is_protocol", False):
        return  # an ABC or protocol: the concrete result may well be storable
    raise SerializationError(
        f"the return annotation {tp.__qualname__} cannot be stored by the default serializer: "
        "return plain data, a dataclass, an Enum or a Pydantic model, pass serializer=, "
        "or validate_return=False to check only the actual result"
    )


def canonical_tree(arguments: object) -> Json:
    """``arguments`` as a JSON tree that RFC 8785 can canonicalize (SPEC 29).

    Equal arguments give equal trees once canonicalized: sets and non-string-keyed maps are
    sorted, integers beyond ±(2**53 - 1) are tagged strings. Raises :class:`SerializationError`
    when an argument has no such form.
    """
    return _Encoder(canonical=True).encode(arguments)


DEFAULT_SERIALIZER = TaggedJSON()

__all__ = [
    "DEFAULT_SERIALIZER",
    "MEDIA_TYPE",
    "Serializer",
    "TaggedJSON",
    "canonical_tree",
]
