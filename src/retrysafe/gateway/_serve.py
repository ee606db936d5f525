"""Run the gateway under uvicorn: one process, or ``workers`` processes via an app factory.

uvicorn's own graceful shutdown applies: on SIGINT/SIGTERM it stops accepting connections,
lets in-flight requests finish for up to ``shutdown_timeout``, then runs the lifespan shutdown
(which closes the upstream pool and the store).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Literal, TypedDict

import uvicorn

from retrysafe import open_store
from retrysafe.errors import ConfigurationError, StoreError
from retrysafe.gateway._app import Gateway, create_app
from retrysafe.gateway._config import RESOLVED_ENV, GatewayConfig


def check_store(config: GatewayConfig) -> None:
    """Open the store once and read from it, so a bad store fails at start-up, not per request."""
    kind = config.store.split(":", 1)[0]  # never echo the URL: it may hold a password
    try:
        store = open_store(config.store)
    except ConfigurationError as exc:
        raise ConfigurationError(f"store: {exc}") from exc
    except StoreError as exc:
        raise ConfigurationError(f"store: cannot use {kind} store: {exc}") from exc
    try:
        store.get("retrysafe-gateway-startup-probe")
    except StoreError as exc:
        raise ConfigurationError(f"store: cannot use {kind} store: {exc}") from exc
    finally:
        with contextlib.suppress(StoreError):
            store.close()


class _Options(TypedDict):
    host: str
    port: int
    log_level: str
    server_header: bool
    date_header: bool
    proxy_headers: bool
    timeout_graceful_shutdown: int
    lifespan: Literal["on"]


def _options(config: GatewayConfig, log_level: str) -> _Options:
    return _Options(
        host=config.host,
        port=config.port,
        log_level=log_level,
        # The upstream's Date and Server headers pass through unchanged; uvicorn must not add
        # its own next to them.
        server_header=False,
        date_header=False,
        # The peer address is the client; X-Forwarded-* it sends are passed on, not trusted.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(config.shutdown_timeout),
        lifespan="on",
    )


def uvicorn_config(
    config: GatewayConfig, app: Gateway, *, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn settings the gateway runs with (tests serve the app with the same ones)."""
    return uvicorn.Config(app, **_options(config, log_level))


def serve(config: GatewayConfig, *, log_level: str = "info") -> None:
    """Serve until interrupted. Blocks."""
    if config.workers == 1:
        uvicorn.Server(uvicorn_config(config, create_app(config), log_level=log_level)).run()
        return
    # uvicorn spawns fresh worker processes: they rebuild the app from the checked config.
    os.environ[RESOLVED_ENV] = config.to_json()
    uvicorn.run(
        "retrysafe.gateway:app_from_env",
        factory=True,
        workers=config.workers,
        **_options(config, log_level),
    )
