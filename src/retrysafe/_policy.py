"""Policy: every knob of the server and function layers in one immutable value.

Defaults are the ones docs/spec.md names. Durations accept seconds (float), ``timedelta``, or
a string with a unit as in the gateway's TOML (``"250ms"``, ``"30s"``, ``"5m"``, ``"24h"``,
``"7d"``); a string is converted to seconds (float) when the policy is made.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta

from retrysafe._durations import parse_duration
from retrysafe._fingerprint import (
    INLINE_BYTES_LIMIT,
    INLINE_JSON_LIMIT,
    BodyMode,
    Fingerprinter,
    RequestFacts,
    bytes_fingerprint,
    json_fingerprint,
)
from retrysafe._keys import MAX_KEY_LENGTH
from retrysafe._scopes import Scope, authorization_scope, check_secret
from retrysafe.errors import ConfigurationError

Duration = timedelta | float | str
RequiredRule = bool | Callable[[str, str], bool]


class Problem(enum.Enum):
    """The errors the idempotency layer itself answers with (SPEC rule 18)."""

    MISSING_KEY = "missing-key"
    MALFORMED_KEY = "malformed-key"
    MISMATCH = "key-mismatch"
    IN_FLIGHT = "request-in-flight"
    UNREPLAYABLE = "unreplayable"
    STORE_UNAVAILABLE = "store-unavailable"
    BODY_TOO_LARGE = "body-too-large"
    MALFORMED_BODY = "malformed-body"
    UNSCOPED = "unscoped-key"  # a key whose principal the policy's scope cannot identify


DEFAULT_STATUS: Mapping[Problem, int] = {
    Problem.MISSING_KEY: 400,
    Problem.MALFORMED_KEY: 400,
    Problem.MISMATCH: 422,
    Problem.IN_FLIGHT: 409,
    Problem.UNREPLAYABLE: 409,
    Problem.STORE_UNAVAILABLE: 503,
    Problem.BODY_TOO_LARGE: 413,
    Problem.MALFORMED_BODY: 400,
    Problem.UNSCOPED: 400,
}

# A URN, not an https URL: the default must not claim a domain the project does not own (RFC 9457
# §3.1.1 allows non-resolvable type URIs). Deployments that publish problem pages set their own.
PROBLEM_BASE_URI = "urn:retrysafe:problem:"

# SPEC rule 8: what a replay may repeat. Never Set-Cookie, Date, request ids or rate limits.
REPLAYED_HEADERS = frozenset(
    {
        "content-type",
        "location",
        "content-location",
        "etag",
        "last-modified",
        "link",
        # Representation metadata SPEC 8 does not list, without which a replayed body is
        # unreadable or mislabelled (a gzip body without Content-Encoding is garbage).
        "content-encoding",
        "content-language",
        "content-disposition",
    }
)
NEVER_REPLAYED = frozenset(
    {
        "set-cookie",
        "date",
        "x-request-id",
        "request-id",
        "x-correlation-id",
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "content-length",
        "transfer-encoding",
        "connection",
        # The replay marker is added on replay; a stored copy would appear twice.
        "idempotent-replayed",
    }
)


# Answers that tell the client to come back later (RFC 9110 15.5.9, RFC 8470, RFC 6585): they
# are not the operation's outcome, so they release the key like a 5xx instead of replaying for
# the whole TTL (a stored 429 would replay without its Retry-After, and pin a day).
RETRY_LATER_STATUSES = frozenset({408, 425, 429})


def seconds(value: Duration) -> float:
    """``value`` in seconds."""
    if isinstance(value, str):
        return parse_duration(value, "duration", allow_zero=True)
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def storage_id(principal_id: str, key: str) -> str:
    """The store's id for (principal id, key): the raw key is never the storage key (SPEC 5).

    ``principal_id`` is the keyed hash :class:`retrysafe._scopes.PrincipalKey` made of the
    scope's principal, never a credential.
    """
    return hashlib.sha256(f"{principal_id}\0{key}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    """How the idempotency layer behaves. Immutable: derive variants with :meth:`replace`."""

    # Which requests are covered (SPEC 2, 11).
    methods: frozenset[str] = frozenset({"POST", "PATCH"})
    header_names: tuple[str, ...] = ("Idempotency-Key",)
    body_field: str | None = None  # optional JSON body field carrying the key
    required: RequiredRule = False  # True, or a callable (method, path) -> bool
    # Key format (SPEC 3).
    key_min_length: int = 1
    key_max_length: int = MAX_KEY_LENGTH
    uuid_only: bool = False
    # Identity and fingerprint (SPEC 5, 6).
    # Who owns a key: a principal string or None (refused). See retrysafe._scopes.
    scope: Scope = authorization_scope
    # Keys principal ids (HMAC). None: $RETRYSAFE_SECRET, else one kept in the store.
    secret: str | None = field(default=None, repr=False, compare=False)
    body_mode: BodyMode = "bytes"
    fingerprint: Fingerprinter | None = None  # overrides body_mode when set
    # Time (SPEC 10, 13, 14).
    ttl: Duration = timedelta(hours=24)
    retention: Duration = timedelta(days=7)  # tombstone window after the TTL
    lease: Duration = timedelta(seconds=60)
    heartbeat: Duration | None = None  # default: a third of the lease
    wait: Duration = timedelta(seconds=5)  # how long a duplicate waits for the first
    in_flight_retry_after: Duration = timedelta(seconds=1)
    unavailable_retry_after: Duration = timedelta(seconds=5)
    # Sizes (SPEC 15, 16).
    max_body: int = 10 * 1024 * 1024
    # body_mode="json": RFC 8785 canonicalization runs at a few MB/s, so a keyed body costs
    # about a second of CPU per MiB. It runs off the event loop, but the JSON parse holds the
    # GIL throughout (tens of ms per MiB): 256 KiB keeps that to a few ms. Larger: 413.
    max_json_body: int = 256 * 1024
    max_cached_body: int = 1024 * 1024
    # What is stored (SPEC 12) and what happens when the store is down (SPEC 17).
    store_server_errors: bool = False
    release_statuses: frozenset[int] = RETRY_LATER_STATUSES  # released, never stored
    # How long a failed completion is retried before the answer is withheld (never past the
    # lease, which a duplicate may then take over).
    settle_retry: Duration = timedelta(seconds=5)
    fail_open: bool = False
    # Replay and problems (SPEC 8, 18).
    replay_headers: frozenset[str] = REPLAYED_HEADERS
    problem_status: Mapping[Problem, int] = field(default_factory=lambda: dict(DEFAULT_STATUS))
    problem_base_uri: str = PROBLEM_BASE_URI
    # The durations in seconds, computed once: the engine reads them on every request.
    _seconds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _limits: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("methods", "header_names", "replay_headers"):
            value = getattr(self, name)
            # A bare string is iterable too: methods="POST" would silently mean {"P","O","S","T"}.
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ConfigurationError(
                    f"{name} must be a collection of non-empty strings, such as "
                    f"{{{value!r}}}, not {value!r}"
                )
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        lowered = frozenset(h.lower() for h in self.replay_headers)
        forbidden = sorted(lowered & NEVER_REPLAYED)
        if forbidden:
            raise ConfigurationError(
                f"replay_headers may not include {', '.join(forbidden)}: "
                "replaying them would leak one response's cookies, dates or limits into another"
            )
        object.__setattr__(self, "replay_headers", lowered)
        if not self.header_names:
            raise ConfigurationError("header_names needs at least one header name")
        # Header names are case-insensitive: a name listed twice would make every keyed request
        # look like it carries two key headers, and be refused.
        if len({h.lower() for h in self.header_names}) != len(self.header_names):
            raise ConfigurationError(
                f"header_names lists the same header twice (names are case-insensitive): "
                f"{self.header_names!r}"
            )
        if not 1 <= self.key_min_length <= self.key_max_length <= MAX_KEY_LENGTH:
            raise ConfigurationError(
                f"need 1 <= key_min_length <= key_max_length <= {MAX_KEY_LENGTH}, got "
                f"{self.key_min_length} and {self.key_max_length}"
            )
        if self.body_mode not in ("bytes", "json"):
            raise ConfigurationError(f"body_mode must be 'bytes' or 'json', not {self.body_mode!r}")
        durations = ("ttl", "retention", "lease", "heartbeat", "wait", "settle_retry")
        for name in (*durations, "in_flight_retry_after", "unavailable_retry_after"):
            value = getattr(self, name)
            if value is None and name == "heartbeat":
                continue
            if isinstance(value, str):  # "24h", as the gateway's TOML writes it
                value = parse_duration(value, name, allow_zero=True)
                object.__setattr__(self, name, value)
            # bool is an int, and NaN or infinity would make every expiry comparison false.
            if not isinstance(value, timedelta | int | float) or isinstance(value, bool):
                raise ConfigurationError(
                    f"{name} must be a number of seconds, a timedelta or a string such as "
                    f"'30s' or '24h', not {value!r}"
                )
            if not math.isfinite(seconds(value)):
                raise ConfigurationError(f"{name} must be finite, not {value!r}")
        retry_durations = ("in_flight_retry_after", "unavailable_retry_after", "settle_retry")
        for name in ("ttl", "lease", "wait", *retry_durations):
            if seconds(getattr(self, name)) <= 0 and name in ("ttl", "lease"):
                raise ConfigurationError(f"{name} must be positive")
            if seconds(getattr(self, name)) < 0:
                raise ConfigurationError(f"{name} must not be negative")
        if seconds(self.retention) < 0:
            raise ConfigurationError("retention must not be negative")
        if self.heartbeat is not None and not 0 < seconds(self.heartbeat) < seconds(self.lease):
            raise ConfigurationError("heartbeat must be positive and shorter than the lease")
        self._check_release_statuses()
        for name in ("max_body", "max_json_body", "max_cached_body"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must not be negative: {getattr(self, name)}")
        if not callable(self.scope):
            raise ConfigurationError(
                f"scope must be a callable (RequestFacts) -> str | None such as "
                f"authorization_scope or cookie_scope('sessionid'), not {self.scope!r}"
            )
        if self.secret is not None:
            check_secret(self.secret, "Policy.secret")
        if not (isinstance(self.required, bool) or callable(self.required)):
            raise ConfigurationError(
                f"required must be True, False or a callable (method, path) -> bool, "
                f"not {self.required!r}"
            )
        unknown = [p for p in self.problem_status if not isinstance(p, Problem)]
        if unknown:
            raise ConfigurationError(
                f"problem_status keys must be Problem members (e.g. Problem.MISMATCH), "
                f"not {unknown[0]!r}"
            )
        status = {**DEFAULT_STATUS, **self.problem_status}
        for problem, code in status.items():
            if not 400 <= code <= 599:
                raise ConfigurationError(f"status for {problem.value} must be 4xx or 5xx: {code}")
        object.__setattr__(self, "problem_status", status)
        lease = seconds(self.lease)
        object.__setattr__(
            self,
            "_seconds",
            (
                seconds(self.ttl),
                seconds(self.retention),
                lease,
                seconds(self.heartbeat) if self.heartbeat is not None else lease / 3,
                seconds(self.wait),
                seconds(self.in_flight_retry_after),
                seconds(self.unavailable_retry_after),
                seconds(self.settle_retry),
            ),
        )

        # body_limit and inline_fingerprint_limit, worked out once: every keyed request reads
        # both, and two property calls each cost a keyed request ~0.3 µs (issue 17).
        canonical = self.fingerprint is None and self.body_mode == "json"
        plain = self.fingerprint is None and self.body_mode == "bytes"
        object.__setattr__(
            self,
            "_limits",
            (
                min(self.max_body, self.max_json_body) if canonical else self.max_body,
                INLINE_BYTES_LIMIT if plain else INLINE_JSON_LIMIT,
            ),
        )

    def _check_release_statuses(self) -> None:
        statuses = self.release_statuses
        if isinstance(statuses, str | int) or not all(
            type(code) is int and 400 <= code <= 599 for code in statuses
        ):
            # Releasing a success would let a retry run a completed operation again.
            raise ConfigurationError(
                f"release_statuses must be a collection of 4xx/5xx status codes, such as "
                f"{{408, 425, 429}}, not {statuses!r}"
            )
        object.__setattr__(self, "release_statuses", frozenset(statuses))

    def replace(self, **changes: object) -> Policy:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # Derived values, in the units the engine uses.
    @property
    def ttl_s(self) -> float:
        return self._seconds[0]

    @property
    def retention_s(self) -> float:
        return self._seconds[1]

    @property
    def lease_s(self) -> float:
        return self._seconds[2]

    @property
    def heartbeat_s(self) -> float:
        return self._seconds[3]

    @property
    def wait_s(self) -> float:
        return self._seconds[4]

    @property
    def in_flight_retry_after_s(self) -> float:
        return self._seconds[5]

    @property
    def unavailable_retry_after_s(self) -> float:
        return self._seconds[6]

    @property
    def settle_retry_s(self) -> float:
        return self._seconds[7]

    @property
    def canonicalizes_json(self) -> bool:
        """Whether request bodies are fingerprinted by their RFC 8785 form (``body_mode="json"``
        and no custom fingerprinter)."""
        return self.fingerprint is None and self.body_mode == "json"

    @property
    def body_limit(self) -> int:
        """The largest keyed request body buffered (SPEC 16): ``max_body``, and no more than
        ``max_json_body`` when bodies are canonicalized as JSON."""
        return self._limits[0]

    @property
    def inline_fingerprint_limit(self) -> int:
        """The largest body whose fingerprint an event loop computes itself; a larger one is
        computed on a worker thread (RFC 8785 and custom fingerprinters cost more per byte)."""
        return self._limits[1]

    def fingerprint_of(self, facts: RequestFacts) -> str:
        if self.fingerprint is not None:
            return self.fingerprint(facts)
        return json_fingerprint(facts) if self.body_mode == "json" else bytes_fingerprint(facts)

    def requires_key(self, method: str, path: str) -> bool:
        rule = self.required
        return rule(method, path) if callable(rule) else bool(rule)

    def covers(self, method: str) -> bool:
        return method.upper() in self.methods

    def should_store(self, status: int, retry_after: bool = False) -> bool:
        """SPEC 12: keep 2xx-4xx; 5xx only with ``store_server_errors``.

        Never a status in ``release_statuses`` (408, 425, 429: "try again"), nor a 5xx that
        carries ``Retry-After`` (``retry_after``): a 503 asking to come back is no outcome.
        """
        if status in self.release_statuses:
            return False
        if status >= 500:
            return self.store_server_errors and not retry_after
        return True
