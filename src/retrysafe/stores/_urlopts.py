"""Store options carried in a URL's query string (``?pool_size=20&timeout=2``), and URLs fit
to print.

The Redis and PostgreSQL URLs mix retrysafe's own options with the driver's (``sslmode``,
``ssl_cert_reqs``...). :func:`split_options` takes out the options retrysafe knows, converts
them, and leaves the rest in the URL for the driver, after checking that the driver takes
them: a misspelt option (``?shema=app``, ``?prefx=billing:``) is a
:class:`~retrysafe.errors.ConfigurationError` naming it, the valid ones and the closest, never
a driver traceback on first use nor an option silently ignored (a user who believes their
records are namespaced and they are not). A Redis URL's database number is checked the same
way. Every message shows the URL through :func:`redacted_url`: a password is never echoed.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from retrysafe.errors import ConfigurationError

_REDIS = ("redis", "rediss", "redis+cluster", "rediss+cluster")
_POSTGRES = ("postgresql", "postgres")
# Query options whose value is a secret, as the drivers spell them (libpq, redis-py).
_SECRET_OPTIONS = re.compile(r"(?i)([?&](?:password|sslpassword|ssl_password)=)[^&#]*")
_MASK = r"\1***"


def as_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def redacted_url(url: str) -> str:
    """``url`` fit for a message, a log line or a terminal: its password replaced by ``***``.

    The user name, host, path and options stay (they are what an operator needs to recognise
    the store). Both places a password can sit are covered: the authority
    (``postgresql://u:s3cret@db/app``) and a query option (``?password=``, ``?sslpassword=``).
    A password with an unencoded ``@`` is masked whole: the user info runs to the last ``@``
    before the query string.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # a bare path (a SQLite DLQ file) has no credentials
    first_at = rest.find("@")
    if first_at >= 0:
        query_at = rest.find("?", first_at)
        at = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    return f"{scheme}://{_SECRET_OPTIONS.sub(_MASK, rest)}"


class UnknownURLOption(ConfigurationError):
    """A URL names an option neither retrysafe nor the driver takes.

    Carries what the message is made of, so that :func:`~retrysafe.stores.url.open_store`
    can add the options it handles itself (``local_cache``) to the list and the suggestion.
    """

    def __init__(
        self, url: str, name: str, ours: Collection[str], driver: Collection[str], driver_note: str
    ) -> None:
        self.url, self.name = url, name
        self.ours, self.driver, self.driver_note = tuple(ours), tuple(driver), driver_note
        close = difflib.get_close_matches(name, [*self.ours, *self.driver], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(self.ours) if self.ours else "none"
        super().__init__(
            f"unknown option {name!r} in {_kind(url)} URL {redacted_url(url)}{hint}. "
            f"Valid options: {listed}{driver_note}"
        )

    def with_options(self, more: Collection[str], url: str) -> UnknownURLOption:
        """The same error about ``url`` (the URL as the user wrote it), with ``more`` options
        of ours listed (and suggested) first."""
        return UnknownURLOption(url, self.name, [*more, *self.ours], self.driver, self.driver_note)


def split_options(
    url: str, known: Mapping[str, Callable[[str], Any]], *, check_rest: bool = True
) -> tuple[str, dict[str, Any]]:
    """Return ``url`` without the ``known`` query options, and those options converted.

    The options left in the URL must be ones its driver takes (none for ``memory://`` and
    ``sqlite://``, which have no driver options); a Redis URL's path must be a database
    number (``check_rest=False`` leaves that to whoever opens the URL next). Only the query
    string is rewritten: the rest of the URL is kept as written (a round trip through
    ``urlunsplit`` would turn ``sqlite:////abs.db`` into ``sqlite://abs.db``).
    """
    base, _, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    scheme = base.partition("://")[0].lower()
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        convert = known.get(name)
        if convert is None:
            kept.append((name, value))
            continue
        try:
            options[name] = convert(value)
        except ValueError as exc:
            raise ConfigurationError(
                f"option {name}={value!r} in {_kind(url)} URL {redacted_url(url)}: {exc}"
            ) from exc
    if check_rest:
        driver, note = _driver_options(scheme)
        for name, _value in kept:
            if name not in driver:
                raise UnknownURLOption(url, name, list(known), sorted(driver), note)
        if scheme in _REDIS:
            _check_redis_db(url, base, kept)
    clean = f"{base}?{urlencode(kept)}" if kept else base
    return f"{clean}{hash_}{fragment}", options


def _kind(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    if scheme in _REDIS:
        return "Redis"
    if scheme in _POSTGRES:
        return "PostgreSQL"
    return {"sqlite": "SQLite", "memory": "memory"}.get(scheme, scheme or "store")


def _driver_options(scheme: str) -> tuple[frozenset[str], str]:
    """The query options the driver behind ``scheme`` takes, and how a message names them."""
    if scheme in _REDIS:
        tls = scheme.startswith("rediss")
        names = _redis_options(tls=tls)
        ssl_note = "" if tls else " (the ssl_* options need rediss://)"
        return names, f"; and redis-py's: {', '.join(sorted(names))}{ssl_note}"
    if scheme in _POSTGRES:
        return _libpq_options(), (
            "; and any libpq connection parameter (sslmode, sslrootcert, application_name, "
            "options, target_session_attrs, ...)"
        )
    return frozenset(), " (this store takes no driver options)"


def _redis_options(*, tls: bool) -> frozenset[str]:
    """What redis-py's ``from_url`` converts, plus the connection settings a URL can carry
    as text: the ``ssl_*`` ones only on ``rediss://`` (a plain connection refuses them)."""
    import redis.connection

    names = set(redis.connection.URL_QUERY_ARGUMENT_PARSERS)
    names |= {"client_name", "username", "password"}
    if tls:
        params = inspect.signature(redis.connection.SSLConnection.__init__).parameters
        names |= {p for p in params if p.startswith("ssl_")}
    return frozenset(names)


def _libpq_options() -> frozenset[str]:
    """The connection parameters of the libpq psycopg is linked with."""
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


_DB_PATH = re.compile(r"/?(\d*)/?")


def _check_redis_db(url: str, base: str, kept: list[tuple[str, str]]) -> None:
    """The path of a Redis URL is a database number (``/0``), or nothing; so is ``?db=``.
    redis-py reads a path it cannot parse as database 0 without a word."""
    authority_and_path = base.partition("://")[2]
    path = authority_and_path[authority_and_path.rfind("@") + 1 :].partition("/")[2]
    db = dict(kept).get("db")
    if _DB_PATH.fullmatch(f"/{path}") is None or (db is not None and not db.isdigit()):
        shown = path if _DB_PATH.fullmatch(f"/{path}") is None else db
        raise ConfigurationError(
            f"bad Redis database {shown!r} in {redacted_url(url)}: the path after the host "
            "is a database number, e.g. redis://host:6379/0"
        )
