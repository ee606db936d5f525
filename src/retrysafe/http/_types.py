"""The ASGI and WSGI callable types the middlewares accept and return (PEP 3333, ASGI 3).

:mod:`retrysafe.http` exports them, so an application wrapping or testing the middlewares
can annotate with the same names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any

__all__ = [
    "ASGIApp",
    "Environ",
    "ExcInfo",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
