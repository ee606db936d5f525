"""Methods: which instance (or class) a call is made on is part of the operation.

``alice.withdraw(30)`` and ``bob.withdraw(30)`` have equal arguments but are two operations.
A decorated function whose first parameter is ``self`` or ``cls`` (or a bound method handed
to a decorator) has a *receiver*, and the receiver's identity enters the call's canonical
arguments, hence its fingerprint and derived key:

- an instance: ``("instance", "module:Class", obj.idempotency_id)``. The object must say who it
  is: an ``idempotency_id`` attribute or property holding a stable value with a canonical form
  (a primary key, an account number). Its address would differ in every process and its
  fields may change between calls, so neither is used. Without one the call raises
  :class:`~retrysafe.errors.InstanceIdentityRequired` before anything runs.
- a class (``cls``, a classmethod): ``("class", "module:Class")``, so ``Sub.create()`` and
  ``Base.create()`` are two operations.

Listing the receiver in ``ignore_args`` (``ignore_args=("self",)``) says every instance is the
same operation (a stateless service object): it is then left out, as any ignored argument.
A staticmethod has no receiver: its arguments alone are the operation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from retrysafe.errors import InstanceIdentityRequired, SerializationError
from retrysafe.tools._serializer import canonical_tree

IDENTITY_ATTRIBUTE = "idempotency_id"
RECEIVER_NAMES = ("self", "cls")
Identity = tuple[object, ...]  # ("instance", "module:Class", id) or ("class", "module:Class")


def receiver_of(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn``'s receiver parameter (``self``/``cls``), if it has one."""
    target = fn.__func__ if inspect.ismethod(fn) else fn
    params = list(inspect.signature(target).parameters)
    return params[0] if params and params[0] in RECEIVER_NAMES else None


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def identity(receiver: object, operation: str) -> Identity:
    """What tells ``receiver`` apart from other instances (or classes) for ``operation``."""
    if isinstance(receiver, type):
        return ("class", _class_name(receiver))
    cls = type(receiver)
    try:
        value = getattr(receiver, IDENTITY_ATTRIBUTE)
    except AttributeError:
        value = None
    if value is None or value == "":
        raise InstanceIdentityRequired(
            f"{operation} is a method, and this {cls.__qualname__} does not say which instance "
            "it is: without that, two instances' calls with equal arguments are one operation "
            "and the second silently gets the first one's result. Give the class an "
            f"`{IDENTITY_ATTRIBUTE}` attribute or property with a stable value naming the "
            f"instance (e.g. `{IDENTITY_ATTRIBUTE} = property(lambda self: self.account_no)`), "
            "or, if every instance is the same operation (a stateless service), say so with "
            "ignore_args=('self',)"
        )
    try:
        canonical_tree(value)
    except SerializationError as exc:
        raise InstanceIdentityRequired(
            f"{operation}: {cls.__qualname__}.{IDENTITY_ATTRIBUTE} must be plain data (a str, "
            f"an int, a UUID, a tuple of them...), not {type(value).__qualname__} ({exc})"
        ) from exc
    return ("instance", _class_name(cls), value)
