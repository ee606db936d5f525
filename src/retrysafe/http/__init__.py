"""Server adapters: pure ASGI and WSGI middleware around the same engine.

``ASGIIdempotencyMiddleware`` wraps an ASGI application (FastAPI, Starlette, Litestar, Quart,
Django's ASGI handler); ``WSGIIdempotencyMiddleware`` a WSGI one (Flask, Django, any PEP 3333
app). ``STATE_KEY`` and ``ENVIRON_KEY`` name where each puts the request's idempotency key for
the application (``scope["state"][STATE_KEY]``, ``environ[ENVIRON_KEY]``). The ASGI and WSGI
callable types (``ASGIApp``, ``Scope``, ``WSGIApp``, ...) are the ones the middlewares take.
"""

from __future__ import annotations

from retrysafe.http._asgi import STATE_KEY, ASGIIdempotencyMiddleware
from retrysafe.http._types import (
    ASGIApp,
    Environ,
    ExcInfo,
    Message,
    Receive,
    Scope,
    Send,
    StartResponse,
    WSGIApp,
)
from retrysafe.http._wsgi import ENVIRON_KEY, WSGIIdempotencyMiddleware

__all__ = [
    "ENVIRON_KEY",
    "STATE_KEY",
    "ASGIApp",
    "ASGIIdempotencyMiddleware",
    "Environ",
    "ExcInfo",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
    "WSGIIdempotencyMiddleware",
]
