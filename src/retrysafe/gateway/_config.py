"""The gateway's configuration: a TOML file, then environment variables, then CLI flags.

Later layers win. Every value remembers where it came from, so a bad one is reported at
start-up with its origin ("RETRYSAFE_UPSTREAM: 'ftp://x' is not an http(s) URL", "gw.toml:
routes[2].ttl: ..."), and unknown keys in the file are errors, not silently ignored typos.

The file (all keys optional; ``upstream`` must come from somewhere)::

    upstream = "http://127.0.0.1:9000"      # RETRYSAFE_UPSTREAM, --upstream
    store = "sqlite:///retrysafe.db"         # RETRYSAFE_STORE_URL, --store
    host = "127.0.0.1"                      # RETRYSAFE_HOST, --host
    port = 8080                             # RETRYSAFE_PORT, --port
    workers = 1                             # RETRYSAFE_WORKERS, --workers
    admin_prefix = "/_retrysafe"             # health and metrics live under it
    max_connections = 100                   # pooled upstream connections per process
    shutdown_timeout = "30s"                # how long in-flight requests get on shutdown

    [timeouts]                              # upstream timeouts
    connect = "5s"                          # RETRYSAFE_CONNECT_TIMEOUT, --connect-timeout
    read = "60s"                            # RETRYSAFE_READ_TIMEOUT, --read-timeout
    write = "60s"
    pool = "5s"

    [policy]                                # the idempotency policy of every route ...
    methods = ["POST", "PATCH"]
    required = false
    ttl = "24h"
    scope_header = "Authorization"          # records are per value of this header ...
    scope_cookie = "sessionid"              # ... else of this cookie (default: none)
    anonymous = "refuse"                    # a key with neither: "refuse" (400) or "shared"
    wait = "5s"
    lease = "60s"
    body_mode = "bytes"                     # or "json" (RFC 8785 canonical bodies)
    replay_headers = ["X-Resource-Id"]      # replayed besides SPEC 8's list + Content-Encoding
    max_body = "10MiB"                      # larger keyed bodies: 413 (bytes, or KiB/MiB/GiB)
    max_json_body = "256KiB"                # the cap in body_mode = "json" (parsing costs CPU)
    max_cached_body = "1MiB"                # larger responses are not stored for replay
    release_statuses = [408, 425, 429]      # answers that release the key instead of replaying
    store_server_errors = false             # keep 5xx answers for replay (default: release)
    settle_retry = "5s"                     # how long to retry storing the outcome

    [[routes]]                              # ... unless a route (longest path prefix) says else
    path = "/payments"
    required = true
    scope_header = "X-Api-Key"

No I/O beyond reading the file; the store URL is checked when the store is opened.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from retrysafe._durations import parse_duration
from retrysafe._policy import REPLAYED_HEADERS, Policy
from retrysafe._scopes import Scope, cookie_scope, first_scope, header_scope, shared_scope
from retrysafe.errors import ConfigurationError
from retrysafe.gateway._target import DOT_SEGMENTS, Prefix, choose, readings
from retrysafe.stores.url import DEFAULT_URL as DEFAULT_STORE_URL

CONFIG_ENV = "RETRYSAFE_CONFIG"
RESOLVED_ENV = "RETRYSAFE_GATEWAY_RESOLVED"  # hands the checked config to uvicorn's workers

# environment variable -> flattened setting name
ENV_VARS: Mapping[str, str] = {
    "RETRYSAFE_UPSTREAM": "upstream",
    "RETRYSAFE_STORE_URL": "store",
    "RETRYSAFE_HOST": "host",
    "RETRYSAFE_PORT": "port",
    "RETRYSAFE_WORKERS": "workers",
    "RETRYSAFE_CONNECT_TIMEOUT": "timeouts.connect",
    "RETRYSAFE_READ_TIMEOUT": "timeouts.read",
}
_TOP_KEYS = (
    "upstream",
    "store",
    "host",
    "port",
    "workers",
    "admin_prefix",
    "max_connections",
    "shutdown_timeout",
    "timeouts",
    "policy",
    "routes",
)
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
_POLICY_KEYS = (
    "methods",
    "required",
    "ttl",
    "scope_header",
    "scope_cookie",
    "anonymous",
    "wait",
    "lease",
    "body_mode",
    "replay_headers",
    "max_body",
    "max_json_body",
    "max_cached_body",
    "release_statuses",
    "store_server_errors",
    "settle_retry",
)
_DEFAULTS = Policy()  # the gateway's defaults are the middleware's: one source of truth
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
# Representation metadata a replay needs to mean the same as the original: without
# Content-Encoding a replayed gzip body is garbage. Added to SPEC 8's allow-list for every
# route (the core list predates the gateway; see docs/gateway.md).
# The representation headers a proxy must replay are in the core allow-list now.
GATEWAY_REPLAYED: frozenset[str] = frozenset()
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token (methods, header names)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds (httpx's four kinds)."""

    connect: float = 5.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 5.0


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The idempotency policy of one path prefix (``path=""`` is the default for all paths)."""

    path: str = ""
    methods: tuple[str, ...] = ("POST", "PATCH")
    required: bool = False
    ttl: float = 86400.0
    scope_header: str = "Authorization"
    scope_cookie: str | None = None  # a session cookie naming the principal when no header does
    anonymous: Literal["refuse", "shared"] = "refuse"  # keys sent with neither
    wait: float = 5.0
    lease: float = 60.0
    body_mode: Literal["bytes", "json"] = "bytes"
    replay_headers: tuple[str, ...] = ()  # more response headers to replay (SPEC 8)
    max_body: int = _DEFAULTS.max_body
    max_json_body: int = _DEFAULTS.max_json_body
    max_cached_body: int = _DEFAULTS.max_cached_body
    release_statuses: tuple[int, ...] = tuple(sorted(_DEFAULTS.release_statuses))
    store_server_errors: bool = _DEFAULTS.store_server_errors
    settle_retry: float = _DEFAULTS.settle_retry_s

    def policy(self) -> Policy:
        """The middleware :class:`Policy` this route stands for."""
        scopes: list[Scope] = [header_scope(self.scope_header)]
        if self.scope_cookie:
            scopes.append(cookie_scope(self.scope_cookie))
        if self.anonymous == "shared":
            scopes.append(shared_scope)
        scope = scopes[0] if len(scopes) == 1 else first_scope(*scopes)
        return Policy(
            methods=frozenset(self.methods),
            required=self.required,
            ttl=self.ttl,
            scope=scope,
            wait=self.wait,
            lease=self.lease,
            body_mode=self.body_mode,
            replay_headers=REPLAYED_HEADERS | GATEWAY_REPLAYED | {*self.replay_headers},
            max_body=self.max_body,
            max_json_body=self.max_json_body,
            max_cached_body=self.max_cached_body,
            release_statuses=frozenset(self.release_statuses),
            store_server_errors=self.store_server_errors,
            settle_retry=self.settle_retry,
        )


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs, checked."""

    upstream: str
    store: str = DEFAULT_STORE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    admin_prefix: str = "/_retrysafe"
    max_connections: int = 100
    shutdown_timeout: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    routes: tuple[RoutePolicy, ...] = ()

    def route_for(self, path: str) -> RoutePolicy:
        """The route with the longest matching prefix (``target.choose``: whole segments, any
        letter case), else the default policy; :class:`PathRefused` for a path the gateway
        refuses to forward."""
        # Routes are sorted longest prefix first by the loader.
        index = choose(path.encode(), b"", [Prefix.of(r.path) for r in self.routes])
        return self.policy if index is None else self.routes[index]

    def to_json(self) -> str:
        """The checked configuration as JSON, to hand to worker processes."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GatewayConfig:
        """Read back :meth:`to_json` output, checking it again."""
        doc = json.loads(text)
        settings: dict[str, Setting] = {}
        for key, value in doc.items():
            if key in ("timeouts", "policy"):
                for sub, subvalue in value.items():
                    settings[f"{key}.{sub}"] = Setting(subvalue, f"{RESOLVED_ENV}: {key}.{sub}")
            else:
                settings[key] = Setting(value, f"{RESOLVED_ENV}: {key}")
        return _build(settings)


@dataclass(frozen=True, slots=True)
class Setting:
    """A raw value and where it came from (used in error messages)."""

    value: object
    origin: str


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> GatewayConfig:
    """Read the file (``path`` or ``$RETRYSAFE_CONFIG``), apply the environment, then ``flags``.

    ``flags`` use the flattened setting names (``upstream``, ``timeouts.read`` ...); None
    values are ignored so CLI options that were not given do not override anything.
    Raises :class:`ConfigurationError` naming the first bad setting and its origin.
    """
    env = os.environ if env is None else env
    settings: dict[str, Setting] = {}
    path = path or env.get(CONFIG_ENV) or None
    if path is not None:
        settings.update(_read_file(Path(path)))
    for var, name in ENV_VARS.items():
        if env.get(var):
            settings[name] = Setting(env[var], var)
    for name, value in (flags or {}).items():
        if value is not None:
            settings[name] = Setting(value, "--" + name.removeprefix("timeouts.") + _suffix(name))
    return _build(settings)


def _suffix(name: str) -> str:
    return "-timeout" if name.startswith("timeouts.") else ""


def _read_file(path: Path) -> dict[str, Setting]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"config file {str(path)!r} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    where = path.name
    _no_unknown(doc, _TOP_KEYS, f"{where}: top level")
    settings: dict[str, Setting] = {}
    for key, value in doc.items():
        if key in ("timeouts", "policy"):
            allowed = _TIMEOUT_KEYS if key == "timeouts" else _POLICY_KEYS
            table = _table(value, f"{where}: [{key}]")
            _no_unknown(table, allowed, f"{where}: [{key}]")
            for sub, subvalue in table.items():
                settings[f"{key}.{sub}"] = Setting(subvalue, f"{where}: [{key}] {sub}")
        else:
            settings[key] = Setting(value, f"{where}: {key}")
    return settings


def _table(value: object, origin: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"{origin}: expected a table, got {value!r}")
    return cast(Mapping[str, Any], value)


def _no_unknown(table: Mapping[str, Any], allowed: Sequence[str], origin: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(allowed)
            raise ConfigurationError(f"{origin}: unknown key {key!r}{hint}; known keys: {known}")


def _build(settings: Mapping[str, Setting]) -> GatewayConfig:
    """Check every setting and assemble the config (the one place values are validated)."""
    if "upstream" not in settings:
        raise ConfigurationError(
            "no upstream configured: pass --upstream URL, set RETRYSAFE_UPSTREAM, or put "
            'upstream = "http://host:port" in the config file'
        )
    get = settings.get
    base = GatewayConfig(upstream="http://unset")
    timeouts = Timeouts(
        **{key: _duration(s) for key in _TIMEOUT_KEYS if (s := get(f"timeouts.{key}")) is not None}
    )
    admin_prefix = (
        _path(s, "admin_prefix") if (s := get("admin_prefix")) else base.admin_prefix
    ).rstrip("/")
    if not admin_prefix:
        raise ConfigurationError(f"{settings['admin_prefix'].origin}: must not be '/'")
    default = _route(
        {k.removeprefix("policy."): s for k, s in settings.items() if k.startswith("policy.")},
        RoutePolicy(),
    )
    routes = _routes(get("routes"), default, admin_prefix)
    return GatewayConfig(
        upstream=_upstream(settings["upstream"]),
        store=_string(s) if (s := get("store")) else base.store,
        host=_string(s) if (s := get("host")) else base.host,
        port=_integer(s, 0, 65535) if (s := get("port")) else base.port,
        workers=_integer(s, 1, 1024) if (s := get("workers")) else base.workers,
        admin_prefix=admin_prefix,
        max_connections=(
            _integer(s, 1, 100_000) if (s := get("max_connections")) else base.max_connections
        ),
        shutdown_timeout=(
            _duration(s) if (s := get("shutdown_timeout")) else base.shutdown_timeout
        ),
        timeouts=timeouts,
        policy=default,
        routes=routes,
    )


def _routes(setting: Setting | None, default: RoutePolicy, admin: str) -> tuple[RoutePolicy, ...]:
    if setting is None:
        return ()
    raw = setting.value
    if not isinstance(raw, list):
        raise ConfigurationError(f"{setting.origin}: expected [[routes]] tables, got {raw!r}")
    routes: list[RoutePolicy] = []
    for index, item in enumerate(raw):
        origin = f"{setting.origin}[{index}]"
        table = _table(item, origin)
        _no_unknown(table, ("path", *_POLICY_KEYS), origin)
        if "path" not in table:
            raise ConfigurationError(f"{origin}: a route needs a path prefix, e.g. path = '/pay'")
        path = _route_path(Setting(table["path"], f"{origin}.path"))
        if path == admin or path.startswith(admin + "/"):
            raise ConfigurationError(f"{origin}.path: {path!r} is under admin_prefix {admin!r}")
        if any(Prefix.of(r.path) == Prefix.of(path) for r in routes):  # /Pay is /pay
            raise ConfigurationError(f"{origin}.path: {path!r} is configured twice")
        subs = {k: Setting(v, f"{origin}.{k}") for k, v in table.items() if k != "path"}
        routes.append(_route(subs, default, path))
    return tuple(sorted(routes, key=lambda r: len(r.path), reverse=True))


def _route(settings: Mapping[str, Setting], base: RoutePolicy, path: str = "") -> RoutePolicy:
    values: dict[str, Any] = {k: getattr(base, k) for k in _POLICY_KEYS}
    for key, s in settings.items():
        if key == "methods":
            values[key] = _methods(s)
        elif key in ("required", "store_server_errors"):
            if not isinstance(s.value, bool):
                raise ConfigurationError(f"{s.origin}: expected true or false, got {s.value!r}")
            values[key] = s.value
        elif key in ("ttl", "wait", "lease"):
            values[key] = _duration(s)
        elif key == "settle_retry":  # 0: one attempt to store the outcome, no retries
            values[key] = parse_duration(s.value, s.origin, allow_zero=True)
        elif key in ("max_body", "max_json_body", "max_cached_body"):
            values[key] = _size(s)
        elif key == "release_statuses":
            values[key] = _statuses(s)
        elif key == "scope_header":
            values[key] = _token(s)
        elif key == "scope_cookie":  # None only from the resolved JSON handed to workers
            values[key] = None if s.value is None else _cookie_name(s)
        elif key == "anonymous":
            if s.value not in ("refuse", "shared"):
                raise ConfigurationError(
                    f"{s.origin}: must be 'refuse' (keys without credentials are answered 400) "
                    f"or 'shared' (every caller without credentials shares one key space), "
                    f"not {s.value!r}"
                )
            values[key] = s.value
        elif key == "replay_headers":
            if not isinstance(s.value, list):
                raise ConfigurationError(f"{s.origin}: expected a list of header names")
            values[key] = tuple(_token(Setting(v, s.origin)).lower() for v in s.value)
        elif key == "body_mode":
            if s.value not in ("bytes", "json"):
                raise ConfigurationError(f"{s.origin}: must be 'bytes' or 'json', not {s.value!r}")
            values[key] = s.value
    route = RoutePolicy(path=path, **values)
    try:
        route.policy()  # Policy checks its own invariants (e.g. ttl, lease); name the route
    except ConfigurationError as exc:
        where = f"route {path!r}" if path else "[policy]"
        raise ConfigurationError(f"{where}: {exc}") from exc
    return route


def _upstream(s: Setting) -> str:
    url = _string(s).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        # "127.0.0.1:8000" parses with no scheme, "localhost:8000" with scheme "localhost".
        hint = "" if "://" in url else f"; did you mean 'http://{url}'?"
        raise ConfigurationError(f"{s.origin}: {s.value!r} is not an http:// or https:// URL{hint}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{s.origin}: {s.value!r} has a bad port") from None
    if not parts.hostname:
        raise ConfigurationError(f"{s.origin}: {s.value!r} names no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            f"{s.origin}: {s.value!r} may hold a scheme, host, port and path prefix only"
        )
    del port
    return url


def _string(s: Setting) -> str:
    if not isinstance(s.value, str) or not s.value.strip():
        raise ConfigurationError(f"{s.origin}: expected a non-empty string, got {s.value!r}")
    return s.value.strip()


def _path(s: Setting, name: str) -> str:
    value = _string(s)
    if not value.startswith("/"):
        raise ConfigurationError(f"{s.origin}: {name} must start with '/', got {value!r}")
    return value


def _route_path(s: Setting) -> str:
    """A route prefix in plain form: one reading (see ``target``), so it means one thing."""
    path = _path(s, "path").rstrip("/") or "/"
    prefix = Prefix.of(path)
    plain = all(r == (prefix.decoded if d else prefix.wire) for r, d in readings(prefix.wire))
    if not plain or any(segment in DOT_SEGMENTS for segment in prefix.decoded.split(b"/")):
        raise ConfigurationError(
            f"{s.origin}: {path!r} can be read as different paths; write it without '.' or "
            "'..' segments, '//', ';', '\\' or percent-encoded '/', '\\', ';'"
        )
    return path


def _integer(s: Setting, low: int, high: int) -> int:
    value = s.value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(
            f"{s.origin}: expected a whole number from {low} to {high}, got {s.value!r}"
        )
    return value


def _size(s: Setting) -> int:
    """A byte count: a whole number, or a string with a binary unit ("64KiB", "10 MiB")."""
    value = s.value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]
    raise ConfigurationError(
        f"{s.origin}: {value!r} is not a size; write a number of bytes or a number with a "
        "unit: B, KiB, MiB, GiB (for example 65536 or '10MiB')"
    )


def _statuses(s: Setting) -> tuple[int, ...]:
    value = s.value
    if not isinstance(value, list) or not all(
        type(code) is int and 400 <= code <= 599 for code in value
    ):
        # Releasing a success would let a retry run a completed operation again.
        raise ConfigurationError(
            f"{s.origin}: expected a list of 4xx/5xx status codes such as [408, 425, 429] "
            f"(an empty list releases none), got {value!r}"
        )
    return tuple(sorted(set(value)))


def _duration(s: Setting) -> float:
    return parse_duration(s.value, s.origin)


def _token(s: Setting) -> str:
    value = _string(s)
    if not _TOKEN.match(value):
        raise ConfigurationError(f"{s.origin}: {value!r} is not a valid header name")
    return value


def _cookie_name(s: Setting) -> str:
    value = _string(s)  # RFC 6265 cookie-name is an RFC 9110 token
    if not _TOKEN.match(value):
        raise ConfigurationError(f"{s.origin}: {value!r} is not a valid cookie name")
    return value


def _methods(s: Setting) -> tuple[str, ...]:
    value = s.value
    if not isinstance(value, list) or not value:
        raise ConfigurationError(f"{s.origin}: expected a list such as ['POST'], got {value!r}")
    methods: list[str] = []
    for item in value:
        if not isinstance(item, str) or not _TOKEN.match(item):
            raise ConfigurationError(f"{s.origin}: {item!r} is not an HTTP method")
        methods.append(item.upper())
    return tuple(methods)
