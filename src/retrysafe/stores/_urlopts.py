"""Store options carried in a URL's query string (``?pool_size=20&timeout=2``).

The Redis and PostgreSQL URLs mix retrysafe's own options with the driver's (``sslmode``,
``ssl_cert_reqs``...). :func:`split_options` takes out the options retrysafe knows, converts
them, and leaves the rest in the URL for the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from retrysafe.errors import ConfigurationError


def as_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def split_options(
    url: str, known: Mapping[str, Callable[[str], Any]]
) -> tuple[str, dict[str, Any]]:
    """Return ``url`` without the ``known`` query options, and those options converted.

    Only the query string is rewritten: the rest of the URL is kept as written (a round trip
    through ``urlunsplit`` would turn ``sqlite:////abs.db`` into ``sqlite://abs.db``).
    """
    base, _, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
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
            raise ConfigurationError(f"store URL option {name}={value!r}: {exc}") from exc
    clean = f"{base}?{urlencode(kept)}" if kept else base
    return f"{clean}{hash_}{fragment}", options
