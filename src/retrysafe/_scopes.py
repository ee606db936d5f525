"""Who owns an idempotency key: scopes and principal ids (SPEC rule 5).

A *scope* reads the request and returns a string naming its principal (a credential, a
session id, a user id), or ``None`` when it cannot tell who sent the request. The layer never
writes that string anywhere: it derives the principal id with a keyed hash (HMAC-SHA256 under
a per-deployment secret, :class:`PrincipalKey`), and only that id reaches the store (inside
the storage id), spans and the audit log. Without the secret, a reader of those cannot test a
guessed password or token against them.

A keyed request whose principal the scope cannot identify is refused (``Problem.UNSCOPED``)
rather than filed with every other unidentified request: pooling them would serve one
principal's stored response to another who sends the same key. :data:`shared_scope` opts in
to that pooling explicitly, for services whose callers are all one principal.

Each built-in scope tags its principal with where it came from, so an ``Authorization``
value and a cookie value that happen to be equal still name different principals.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from retrysafe._fingerprint import RequestFacts
from retrysafe.errors import ConfigurationError

Scope = Callable[[RequestFacts], str | None]

# A secret shorter than this can be guessed as easily as the credentials it protects.
MIN_SECRET_LENGTH = 32
_PRINCIPAL_TAG = b"retrysafe-principal\0"


@dataclass(frozen=True, slots=True)
class HeaderScope:
    """The principal is the value of one request header (a credential, hashed by the layer)."""

    name: str

    @property
    def wants(self) -> str:
        return f"the {self.name} header"

    def __call__(self, facts: RequestFacts) -> str | None:
        value = facts.header(self.name)
        return f"header:{self.name.lower()}\0{value}" if value else None


@dataclass(frozen=True, slots=True)
class CookieScope:
    """The principal is the value of one named cookie (a session id); other cookies, such as
    rotating CSRF or analytics cookies, do not change it."""

    name: str

    @property
    def wants(self) -> str:
        return f"the {self.name} cookie"

    def __call__(self, facts: RequestFacts) -> str | None:
        value = cookie_value(facts.header("cookie"), self.name)
        return f"cookie:{self.name}\0{value}" if value else None


@dataclass(frozen=True, slots=True)
class UserScope:
    """The principal is the user an authentication middleware running before the idempotency
    layer established: ASGI ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``), or
    WSGI ``environ["REMOTE_USER"]``."""

    @property
    def wants(self) -> str:
        return "an authenticated user set by an authentication middleware that runs first"

    def __call__(self, facts: RequestFacts) -> str | None:
        return f"user\0{facts.user}" if facts.user else None


@dataclass(frozen=True, slots=True)
class SharedScope:
    """Every request is the same principal: all callers share one key space.

    Only for services whose callers are all one principal (an internal service behind
    network authentication). Any caller can then replay, or collide with, any other's key.
    """

    @property
    def wants(self) -> str:
        return "nothing (one shared scope)"

    def __call__(self, facts: RequestFacts) -> str | None:
        return "shared"


@dataclass(frozen=True, slots=True)
class FirstScope:
    """The first of ``scopes`` that identifies the request's principal."""

    scopes: tuple[Scope, ...]

    @property
    def wants(self) -> str:
        return " or ".join(wants(scope) for scope in self.scopes)

    def __call__(self, facts: RequestFacts) -> str | None:
        for scope in self.scopes:
            principal = scope(facts)
            if principal is not None:
                return principal
        return None


def header_scope(name: str) -> Scope:
    """A scope taken from header ``name`` (for example ``X-Api-Key``)."""
    if not name or not isinstance(name, str):
        raise ConfigurationError(f"header_scope needs a header name, not {name!r}")
    return HeaderScope(name)


def cookie_scope(name: str) -> Scope:
    """A scope taken from the cookie ``name`` (Django's ``sessionid``, a server-side session).

    The cookie's value must stay the same for a principal across a retry: a session id does,
    a client-side session that is re-signed whenever it changes (Flask's default) does not.
    """
    if not name or not isinstance(name, str):
        raise ConfigurationError(f"cookie_scope needs a cookie name, not {name!r}")
    return CookieScope(name)


def first_scope(*scopes: Scope) -> Scope:
    """The first scope that identifies the principal, e.g. a bearer token else a session."""
    if not scopes:
        raise ConfigurationError("first_scope needs at least one scope")
    return FirstScope(scopes)


# The default: the Authorization header. Requests without it are refused when keyed.
authorization_scope: Scope = HeaderScope("Authorization")
# The authenticated user an earlier middleware set (ASGI scope["user"], WSGI REMOTE_USER).
user_scope: Scope = UserScope()
# Explicit opt-in to one key space for every caller; never the default.
shared_scope: Scope = SharedScope()


def wants(scope: Scope) -> str:
    """What ``scope`` looks for, for the refusal's detail."""
    return str(getattr(scope, "wants", "the credentials Policy.scope reads"))


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of the first cookie ``name`` in a ``Cookie`` header (RFC 6265 section 5.4:
    ``name=value`` pairs separated by ``;``), or None. The first is the one with the most
    specific path, as browsers order them."""
    if not header or name not in header:
        return None
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def check_secret(secret: str, origin: str) -> str:
    """``secret`` if it is long enough to key principal ids, else a ConfigurationError."""
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(
            f"{origin}: the principal secret must be at least {MIN_SECRET_LENGTH} characters "
            'long; generate one with: python -c "import secrets; print(secrets.token_hex(32))"'
        )
    return secret


class PrincipalKey:
    """Turns a principal into its id: HMAC-SHA256 under the deployment's secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode("utf-8")

    def __repr__(self) -> str:
        return "PrincipalKey(<secret>)"

    def id_of(self, principal: str) -> str:
        data = _PRINCIPAL_TAG + principal.encode("utf-8", "surrogateescape")
        return hmac.digest(self._secret, data, "sha256").hex()
