"""Commands packed by hiredis on redis.asyncio connections.

redis-py's sync connections pack a command with ``hiredis.pack_command`` when hiredis is
installed; its asyncio connections always pack in Python, argument by argument: about 7 µs
for a completion script's 15 arguments against 1 µs in hiredis, on every request
(bench/README.md). :func:`hiredis_packing` gives a pool's connection class (plain, TLS or
Unix socket, whichever the URL chose) the sync side's packer. Without hiredis the class is
returned unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import DataError

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - the redis extra installs redis[hiredis]
    _pack = None

_made: dict[type[Any], type[Any]] = {}


class _HiredisPack:
    """Mixin: ``pack_command`` as redis-py's sync ``HiredisRespSerializer`` does it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD" and the like go out as separate words
            args = (*args[0].encode().split(), *args[1:])
        args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        assert _pack is not None  # only mixed in when hiredis is there
        try:
            return [_pack(args)]
        except TypeError as exc:  # an argument of a type Redis has no encoding for
            raise DataError(str(exc)) from exc


def hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` with hiredis packing its commands (the same class if no hiredis)."""
    if _pack is None or issubclass(connection_class, _HiredisPack):
        return connection_class
    made = _made.get(connection_class)
    if made is None:
        made = type(f"Packed{connection_class.__name__}", (_HiredisPack, connection_class), {})
        _made[connection_class] = made
    return made
