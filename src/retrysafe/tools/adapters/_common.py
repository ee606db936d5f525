"""What the SDK adapters share: finding the parameters an SDK injects (contexts, call ids)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any


def _annotation_parts(annotation: object) -> list[object]:
    """``annotation`` and what it wraps: ``Annotated`` extras, ``Optional``/union members."""
    parts: list[object] = [annotation]
    origin = typing.get_origin(annotation)
    if origin is not None:
        parts.append(origin)
        for arg in typing.get_args(annotation):
            parts.extend(_annotation_parts(arg))
    return parts


def injected_params(fn: Callable[..., Any], is_injected: Callable[[object], bool]) -> set[str]:
    """Names of ``fn``'s parameters whose annotation (or any part of it) ``is_injected``.

    Such arguments (a run context, the provider's tool-call id) are supplied by the SDK, not
    by the model: they must not be part of the key (SPEC 29) and need not be serializable.
    """
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {name: p.annotation for name, p in inspect.signature(fn).parameters.items()}
    names = set(inspect.signature(fn).parameters)
    return {
        name
        for name, annotation in hints.items()
        if name in names and any(is_injected(part) for part in _annotation_parts(annotation))
    }


def is_subclass_or_instance(candidate: object, bases: tuple[type, ...]) -> bool:
    """True when ``candidate`` is one of ``bases`` (or a subclass), or an instance of one."""
    if isinstance(candidate, type):
        return issubclass(candidate, bases)
    return isinstance(candidate, bases)
