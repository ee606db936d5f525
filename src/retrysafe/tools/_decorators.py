"""``@idempotent`` for any function and ``@idempotent_tool`` for agent tools (SPEC 28, 29).

Both wrap sync and async functions without changing their signature and run every call
through the same engine as the HTTP middleware (:mod:`retrysafe.tools._calls`). They differ
only in where the key comes from:

- ``@idempotent``: the ``key=`` callable (given the call's arguments) or string; without one,
  the SHA-256 of the RFC 8785 canonical (qualified name, bound arguments) - so equal
  arguments are one operation.
- ``@idempotent_tool``: derived from the durable ``agent_run`` id, the ``agent_step`` path
  (if the caller named one), the tool name and version, and the SHA-256 of the canonical
  arguments. Never from call order (re-planning would shift it) and never from the
  provider's per-turn tool-call id (it changes on every model turn).

On a method, the instance's identity (its ``idempotency_id``) or the class's name is one of
the canonical arguments (see :mod:`retrysafe.tools._receivers`): two instances never share a
result. Both decorators may sit above or below ``@classmethod``/``@staticmethod``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from typing import Any, ParamSpec, TypeVar

from retrysafe._fingerprint import call_fingerprint, canonical_json
from retrysafe._keys import derive_key
from retrysafe._policy import Duration, Policy, storage_id
from retrysafe.errors import ConfigurationError, SerializationError
from retrysafe.stores import AsyncStore, Store
from retrysafe.telemetry import DEFAULT_TELEMETRY, Telemetry
from retrysafe.tools._calls import Call, CallSpec, wrap
from retrysafe.tools._runs import require_run
from retrysafe.tools._serializer import DEFAULT_SERIALIZER, Json, Serializer, canonical_tree

P = ParamSpec("P")
R = TypeVar("R")
KeySource = str | Callable[..., str] | None
TOOL_KEY_VERSION = "retrysafe.tool.v1"  # bump only with a migration note: it changes every key


def _methods_too(
    decorate: Callable[[Callable[P, R]], Callable[P, R]],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``decorate``, also accepting a ``classmethod``/``staticmethod`` object (a decorator
    written above it): the function inside is wrapped and put back in the same descriptor."""

    def apply(fn: Callable[P, R]) -> Callable[P, R]:
        if isinstance(fn, classmethod | staticmethod):
            inner: Any = fn.__func__
            return type(fn)(decorate(inner))
        return decorate(fn)

    return apply


def _policy(policy: Policy | None, **changes: Duration | None) -> Policy:
    base = policy or Policy()
    given = {k: v for k, v in changes.items() if v is not None}
    return base.replace(**given) if given else base


def _canonical(spec: CallSpec, arguments: dict[str, Any]) -> Json:
    """The canonical tree of a call's arguments, checked to have RFC 8785 bytes."""
    try:
        tree = canonical_tree(arguments)
        canonical_json(tree)  # e.g. a lone surrogate in a string has no JCS form
        return tree
    except (SerializationError, ValueError) as exc:
        raise SerializationError(
            f"{spec.name}: its arguments have no canonical form for a key or fingerprint "
            f"({exc}); pass ignore_args=(...) for arguments that are not part of the "
            "operation (clients, connections, contexts)"
        ) from exc


def _check_key(value: object, spec: CallSpec) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{spec.name}: the key must be a non-empty string, got {value!r} from key="
        )
    return value


def idempotent(
    store: Store | AsyncStore,
    key: KeySource = None,
    *,
    policy: Policy | None = None,
    ttl: Duration | None = None,
    lease: Duration | None = None,
    wait: Duration | None = None,
    serializer: Serializer | None = None,
    store_exceptions: tuple[type[BaseException], ...] = (),
    ignore_args: Collection[str] = (),
    namespace: str | None = None,
    validate_return: bool = True,
    telemetry: Telemetry | None = DEFAULT_TELEMETRY,
    atomic: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a sync or async function run once per key (SPEC 28).

    ``key``: a callable receiving the call's arguments, a fixed string, or None (derive from
    the operation's name and arguments). ``namespace`` names the operation (default: the
    qualified name): it scopes keys, so two functions may use the same key without colliding,
    and enters the fingerprint, so set it to keep records valid when the function is renamed
    or moved. ``ttl``, ``lease``
    and ``wait`` override the matching ``policy`` fields. ``store_exceptions`` are stored and
    raised again on replay instead of releasing the claim. ``validate_return`` refuses, before
    running, a return annotation the serializer certainly cannot store. ``telemetry``: spans,
    metrics and audit lines per call (docs/observability.md); None turns them off.
    ``atomic=True`` (SQLite and PostgreSQL stores) lets the function write in the store's
    transaction (:mod:`retrysafe.atomic`) and commits its result with those writes (SPEC 13a).
    """
    chosen = _policy(policy, ttl=ttl, lease=lease, wait=wait)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        spec = CallSpec(
            fn,
            store,
            chosen,
            serializer or DEFAULT_SERIALIZER,
            tuple(store_exceptions),
            frozenset(ignore_args),
            validate_return,
            telemetry,
            atomic=atomic,
        )
        operation = spec.operation = namespace or spec.name
        scope = f"function\0{operation}"

        def keyer(spec: CallSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
            tree = _canonical(spec, spec.arguments(args, kwargs))
            fingerprint = call_fingerprint(operation, tree)
            if key is None:
                chosen_key = fingerprint
            elif callable(key):
                chosen_key = _check_key(key(*args, **kwargs), spec)
            else:
                chosen_key = _check_key(key, spec)
            return Call(chosen_key, storage_id(scope, chosen_key), fingerprint)

        return wrap(spec, keyer)

    return _methods_too(decorate)


def tool_key(run_id: str, steps: tuple[str, ...], name: str, version: str, tree: Json) -> str:
    """The key of an agent tool call (SPEC 29): stable across turns, re-plans and resumes."""
    args_hash = hashlib.sha256(canonical_json(tree)).hexdigest()
    return derive_key(TOOL_KEY_VERSION, run_id, json.dumps(steps), name, version, args_hash)


def idempotent_tool(
    store: Store | AsyncStore,
    *,
    name: str | None = None,
    version: str = "1",
    policy: Policy | None = None,
    ttl: Duration | None = None,
    lease: Duration | None = None,
    wait: Duration | None = None,
    serializer: Serializer | None = None,
    store_exceptions: tuple[type[BaseException], ...] = (),
    ignore_args: Collection[str] = (),
    validate_return: bool = True,
    telemetry: Telemetry | None = DEFAULT_TELEMETRY,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make an agent tool run once per (run, step, tool, version, arguments) (SPEC 29).

    ``name`` defaults to the function's ``__name__`` (what agent SDKs show the model);
    bump ``version`` when the tool's meaning changes so old results are not replayed for it.
    Calls outside ``agent_run(...)`` raise :class:`~retrysafe.errors.AgentRunRequired`.
    ``telemetry``: ``execute_tool`` spans, metrics and audit lines per call; None: off.
    """
    chosen = _policy(policy, ttl=ttl, lease=lease, wait=wait)
    if not isinstance(version, str) or not version:
        raise ConfigurationError(f"version must be a non-empty string, not {version!r}")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        spec = CallSpec(
            fn,
            store,
            chosen,
            serializer or DEFAULT_SERIALIZER,
            tuple(store_exceptions),
            frozenset(ignore_args),
            validate_return,
            telemetry,
        )
        tool_name = spec.operation = spec.tool = name or fn.__name__

        def keyer(spec: CallSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
            run = require_run(f"tool {tool_name!r}")
            run.bind_tool(tool_name, spec.name)
            tree = _canonical(spec, spec.arguments(args, kwargs))
            key = tool_key(run.run_id, run.steps, tool_name, version, tree)
            fingerprint = call_fingerprint(f"{tool_name}@{version}", tree)
            return Call(key, storage_id("tool", key), fingerprint, run.run_id)

        return wrap(spec, keyer)

    return _methods_too(decorate)
