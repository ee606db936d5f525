"""The gateway: a reverse proxy that puts idempotency keys in front of any HTTP API.

``retrysafe proxy --upstream URL`` runs it; :func:`create_app` builds the ASGI app for embedding.
Modules: ``config`` (TOML, environment, flags), ``durations``, ``headers`` (hop-by-hop and
forwarded headers), ``forward`` (the httpx forwarder), ``problems`` (502/504), ``metrics``,
``app`` (routing, admin endpoints, lifespan) and ``serve`` (uvicorn).
"""

from __future__ import annotations

from retrysafe._extras import require

require("gateway", "retrysafe.gateway", "httpx", "uvicorn")


from retrysafe.gateway.app import Gateway, app_from_env, create_app
from retrysafe.gateway.config import GatewayConfig, RoutePolicy, Timeouts, load_config

__all__ = [
    "Gateway",
    "GatewayConfig",
    "RoutePolicy",
    "Timeouts",
    "app_from_env",
    "create_app",
    "load_config",
]
