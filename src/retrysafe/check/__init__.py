"""A black-box conformance checker for any endpoint's ``Idempotency-Key`` behaviour.

``check_endpoint(client, url, ...)`` sends the cases of docs/check.md (replay, mismatch,
concurrent duplicates, a lost answer, in-flight conflicts, missing and malformed keys, problem
details, replay markers, expiry) and returns a :class:`Report`. With an ``httpx.Client`` it
returns the report; with an ``httpx.AsyncClient`` it returns an awaitable of it. Point the client
at a test deployment, or at an app in-process (``httpx.ASGITransport``/``WSGITransport``).

The cases repeat a request that may do real things (charge, send, create): run it against a
test deployment or a sandbox. ``retrysafe check`` refuses non-loopback hosts without ``--yes``.
"""

from __future__ import annotations

from retrysafe._extras import require

require("client", "retrysafe.check", "httpx")


import json as jsonlib
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, overload

import httpx

from retrysafe._keys import new_key
from retrysafe.check._cases import CheckError, check_flow
from retrysafe.check._drivers import run_async, run_sync
from retrysafe.check._render import junit_xml
from retrysafe.check._steps import CaseResult, Report, Target

__all__ = ["CaseResult", "CheckError", "Report", "Target", "check_endpoint", "junit_xml"]


@overload
def check_endpoint(client: httpx.Client, url: str, **options: Any) -> Report: ...


@overload
def check_endpoint(client: httpx.AsyncClient, url: str, **options: Any) -> Awaitable[Report]: ...


def check_endpoint(
    client: httpx.Client | httpx.AsyncClient, url: str, **options: Any
) -> Report | Awaitable[Report]:
    """Check ``url`` through ``client``; options are those of :func:`make_target`.

    Raises :class:`CheckError` when the endpoint cannot be checked (unreachable, or it does not
    accept the base request with a fresh key).
    """
    target = make_target(url, **options)
    if isinstance(client, httpx.AsyncClient):
        return run_async(client, target, check_flow(target, new_key))
    return run_sync(client, target, check_flow(target, new_key))


def make_target(
    url: str,
    *,
    method: str = "POST",
    json: Any = None,
    data: bytes | str | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    key_header: str = "Idempotency-Key",
    required: bool = False,
    concurrency: int = 10,
    ttl: float | None = None,
    mismatch_json: Any = None,
) -> Target:
    """The :class:`Target` for these options; a bad combination is a ``ValueError`` saying why."""
    if json is not None and data is not None:
        raise ValueError("give the request body as json or as data, not both")
    if concurrency < 2:
        raise ValueError(f"concurrency must be at least 2 to race duplicates, not {concurrency}")
    if ttl is not None and ttl < 0:
        raise ValueError(f"ttl must be a number of seconds >= 0, not {ttl}")
    if not key_header or any(c in key_header for c in " :\r\n"):
        raise ValueError(f"key_header must be a header name, not {key_header!r}")
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    names = {name.lower() for name, _ in pairs}
    if key_header.lower() in names:
        raise ValueError(f"the checker sets {key_header} itself; drop it from the headers")
    body = b""
    if json is not None:
        body = jsonlib.dumps(json).encode()
        if "content-type" not in names:
            pairs.append(("Content-Type", "application/json"))
    elif data is not None:
        body = data.encode() if isinstance(data, str) else data
    mismatch = None if mismatch_json is None else jsonlib.dumps(mismatch_json).encode()
    return Target(
        url=url,
        method=method.upper(),
        body=body,
        headers=tuple(pairs),
        key_header=key_header,
        required=required,
        concurrency=concurrency,
        ttl=ttl,
        mismatch_body=mismatch,
    )
