"""A redirect to another origin carries neither the key nor the credentials there.

httpx follows redirects (``follow_redirects=True``) by building the next request from the
previous one's headers; across origins it drops ``Authorization`` only, so an ``X-Api-Key``,
a ``Proxy-Authorization`` and the ``Idempotency-Key`` used to reach whatever host the server
(or anyone who can forge its answer) named. Each hop passes through the transport, and httpx
hands every hop the same ``extensions`` dict, so the transport records the first hop's origin
there and, on a hop to another origin, removes:

- the credential headers the DLQ also keeps out of storage (``REDACTED_HEADERS`` and any the
  queue was told to redact), except ``Cookie``, which httpx re-derives per hop from its cookie
  jar, matched to the new host;
- the key: keys are as sensitive as request ids (SPEC 32) and scoped to the server that
  issued the answer. A hop that needs a key gets one derived from the original and the new
  origin, so the same call redirected again sends the same key there, and the original
  cannot be recovered from it.

An ``http`` -> ``https`` upgrade of the same host is not another origin here (as in httpx).
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from retrysafe._keys import derive_key

ORIGIN_EXTENSION = "retrysafe.first_origin"  # request extension shared by a redirect chain's hops
_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int | None]


def _origin(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


def _same_site(first: Origin, here: Origin) -> bool:
    if first == here:
        return True
    upgrade = (first[0], first[2], here[0], here[2]) == ("http", 80, "https", 443)
    return upgrade and first[1] == here[1]


def strip_cross_origin(
    request: httpx.Request, key_header: str, credentials: Iterable[str]
) -> str | None:
    """Remember the first hop's origin; on a hop to another origin remove the key and the
    credential headers. Returns the key to send on this hop instead (derived), or None."""
    here = _origin(request.url)
    first: Origin | None = request.extensions.get(ORIGIN_EXTENSION)
    if first is None:
        request.extensions[ORIGIN_EXTENSION] = here
        return None
    if _same_site(first, here):
        return None
    for name in credentials:
        request.headers.pop(name, None)
    original = request.headers.get(key_header)
    if original is None:
        return None
    del request.headers[key_header]
    scheme, host, port = here
    return derive_key(original, "retrysafe.redirect", f"{scheme}://{host}:{port}")
