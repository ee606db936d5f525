"""The gateway: a reverse proxy that puts idempotency keys in front of any HTTP API.

``retrysafe proxy --upstream URL`` runs it; :func:`create_app` builds the ASGI app for embedding.
:func:`serve` runs it under uvicorn with :func:`uvicorn_config`'s settings. The private modules
behind it: ``_config`` (TOML, environment, flags), ``_headers`` (hop-by-hop and forwarded
headers), ``_target`` (routes and refused paths), ``_framing`` (refused request framings),
``_forward`` (the httpx forwarder), ``_problems`` (400/502/504), ``_metrics``, ``_app``
(routing, admin endpoints, lifespan) and ``_serve`` (uvicorn).
"""

from __future__ import annotations

from retrysafe._extras import require

require("gateway", "retrysafe.gateway", "httpx", "uvicorn")


from retrysafe.gateway._app import Gateway, app_from_env, create_app
from retrysafe.gateway._config import GatewayConfig, RoutePolicy, Timeouts, load_config
from retrysafe.gateway._serve import check_store, serve, uvicorn_config

__all__ = [
    "Gateway",
    "GatewayConfig",
    "RoutePolicy",
    "Timeouts",
    "app_from_env",
    "check_store",
    "create_app",
    "load_config",
    "serve",
    "uvicorn_config",
]
