"""What is retried, how long to wait, and when to stop (SPEC 21, 22). No I/O here.

:class:`RetryPolicy` is an immutable value, like urllib3's ``Retry``, and never
sleeps itself: it answers questions — is this failure retryable, how long is the backoff, what
did the server ask for — and the retry flow (``_flow.py``) acts on the answers.

Failures are classified the way urllib3 does:

* **never sent** — the request cannot have reached the application (connect errors, connect
  and pool timeouts, proxy errors): always safe to retry;
* **maybe processed** — the request may have run (read timeouts, resets, protocol errors):
  retried only when the request is idempotent by method or carries an idempotency key, because
  only then does the server make the repeat harmless.

A drop *while the body of an answer is being read* is a maybe-processed failure too, but httpx
reads the body only after the transport has returned, out of the retry loop's reach. So the
loop reads some bodies itself first (:meth:`RetryPolicy.buffers`): only those it can hold
without changing what a streaming caller sees — see that method for the rule and its reasons.
"""

from __future__ import annotations

import enum
import json
import math
import random
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime

import httpx

from retrysafe._problems import problem_slug
from retrysafe.errors import ConfigurationError

BUFFER_LIMIT = 1 << 20  # 1 MiB: the largest declared body read before the answer is returned
_NO_BODY_STATUSES = frozenset({204, 205, 304})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# SPEC 21: 408 Request Timeout, 425 Too Early, 429 Too Many Requests, and every 5xx.
RETRY_STATUSES = frozenset({408, 425, 429, *range(500, 600)})

_NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)
_MAYBE_PROCESSED: tuple[type[Exception], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
    httpx.RemoteProtocolError,
)


class Failure(enum.Enum):
    """How an attempt failed, as far as retrying is concerned."""

    NEVER_SENT = "never_sent"
    MAYBE_PROCESSED = "maybe_processed"
    FATAL = "fatal"  # a local error (bad URL, unsupported protocol): retrying cannot help


def classify_error(exc: BaseException) -> Failure:
    """Whether a transport exception left the request unsent, maybe processed, or is fatal."""
    if isinstance(exc, _NEVER_SENT):
        return Failure.NEVER_SENT
    if isinstance(exc, _MAYBE_PROCESSED):
        return Failure.MAYBE_PROCESSED
    return Failure.FATAL


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a call, as recorded in errors, the response report and the DLQ."""

    number: int  # 1-based; the header carries it, telemetry records number - 1 as resend_count
    started: float  # wall-clock epoch seconds
    duration: float
    status: int | None = None
    error: str | None = None  # "ConnectError: ..." when no response came back
    wait: float = 0.0  # the pause taken after this attempt, before the next

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else (self.error or "?")
        return f"#{self.number}: {what} after {self.duration * 1000:.0f} ms"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried. Defaults are SPEC 21-22's; derive variants with :meth:`replace`.

    ``attempts`` counts every try including the first; ``deadline`` bounds the whole call
    (attempts and pauses); ``retry_after_cap`` is the longest server-requested wait honoured
    in-process — a longer one parks the call instead (SPEC 21, 25).
    """

    attempts: int = 3
    base: float = 0.5
    cap: float = 8.0
    deadline: float | None = 30.0
    retry_after_cap: float = 60.0
    statuses: frozenset[int] = RETRY_STATUSES
    idempotent_methods: frozenset[str] = IDEMPOTENT_METHODS
    keyed_methods: frozenset[str] = frozenset({"POST", "PATCH"})  # get a key when they lack one
    key_header: str = "Idempotency-Key"
    attempt_header: str | None = "Idempotency-Attempt"  # the 1-based attempt number
    replayed_header: str = "Idempotent-Replayed"
    in_flight_problem: str = "request-in-flight"  # problem type tails of the retrysafe server
    mismatch_problem: str = "key-mismatch"
    raise_on_mismatch: bool = True
    buffer_limit: int = BUFFER_LIMIT  # bytes; 0: never read a body before returning it

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError("attempts counts the first try too; it must be at least 1")
        if self.base < 0 or self.cap < 0 or self.retry_after_cap < 0:
            raise ConfigurationError("base, cap and retry_after_cap must not be negative")
        if self.buffer_limit < 0:
            raise ConfigurationError("buffer_limit is a byte count: 0 (off) or more")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigurationError("deadline must be positive (or None for no deadline)")
        object.__setattr__(self, "idempotent_methods", _upper(self.idempotent_methods))
        object.__setattr__(self, "keyed_methods", _upper(self.keyed_methods))

    def replace(self, **changes: object) -> RetryPolicy:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): ``U(0, min(cap, base * 2**retry))``.

        ``retry`` is 0 before the second attempt, 1 before the third, and so on.
        """
        ceiling = min(self.cap, self.base * 2.0 ** min(retry, 64))
        return rng.uniform(0.0, ceiling)

    def retry_safe(self, method: str, keyed: bool) -> bool:
        """Whether a repeat of a maybe-processed request is harmless (SPEC 21)."""
        return keyed or method.upper() in self.idempotent_methods

    def wants_key(self, method: str) -> bool:
        return method.upper() in self.keyed_methods

    def buffers(self, method: str, status: int, headers: httpx.Headers) -> bool:
        """Whether to read this answer's body inside the retry loop (SPEC 21).

        A connection that drops mid-body would otherwise surface after the transport returned,
        unretried, even though a keyed repeat is harmless (the server replays). Read first are
        only bodies that are **bounded and small**: a ``Content-Length`` of 1 byte to
        ``buffer_limit`` (1 MiB). Never read first:

        * chunked or close-delimited bodies (no ``Content-Length``): that is how streams are
          sent (NDJSON, token streams, long downloads), and holding them until they end would
          delay a ``client.stream()`` caller's first chunk by the whole stream;
        * ``text/event-stream`` whatever its framing;
        * bodies over the limit (memory, and a large download is better resumed than repeated);
        * answers that have no body (HEAD, 1xx, 204, 205, 304).

        The caller (the flow) asks only when a repeat is safe — a key or an idempotent method —
        since otherwise a failed read could not be retried anyway and reading early would only
        take streaming away. A small body read first is still served to a streaming caller,
        from memory, in one piece.
        """
        if self.buffer_limit == 0 or method.upper() == "HEAD":
            return False
        if status < 200 or status in _NO_BODY_STATUSES:
            return False
        if "text/event-stream" in headers.get("content-type", "").lower():
            return False
        if "transfer-encoding" in headers:  # chunked wins over Content-Length (RFC 9112 6.3)
            return False
        declared = headers.get("content-length", "")
        if not (declared.isascii() and declared.isdigit()):  # absent, or a list: httpx judges
            return False
        return 0 < int(declared) <= self.buffer_limit


def _upper(methods: frozenset[str]) -> frozenset[str]:
    return frozenset(m.upper() for m in methods)


def retry_after(headers: httpx.Headers, now: float) -> float | None:
    """The wait the server asked for, in seconds, or None (SPEC 21).

    ``retry-after-ms`` (milliseconds, as sent by some APIs) is preferred when present because it
    is more precise; ``Retry-After`` is delay-seconds or an HTTP-date (RFC 9110, 10.2.3), the
    latter measured against ``now`` (wall-clock epoch seconds). Unparseable values are ignored.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may parse naive
        return None
    return max(0.0, when.timestamp() - now)


def problem_type(response: httpx.Response) -> str | None:
    """The name at the end of an RFC 9457 problem's ``type``, when the body is one."""
    ctype = response.headers.get("content-type", "")
    if not ctype.lower().startswith("application/problem+json"):
        return None
    try:
        doc = json.loads(response.content)
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if not isinstance(kind, str):
        return None
    return problem_slug(kind)
