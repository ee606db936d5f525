"""A Hypothesis-driven HTTP fuzzer for every door: ASGI middleware, WSGI middleware, gateway.

Four parts, reused by ``tests/adversarial/test_fuzz.py`` (a short derandomized run in CI) and
``bench/fuzz.py`` (a long run):

- **The recording app** (:class:`RecordingASGI`, :class:`RecordingWSGI`) stands behind the
  door. It counts every execution per (principal, key) in a :class:`Recorder` and answers a
  JSON document naming the request it ran for (``id``: the request's ``X-Fuzz-Id``), the
  principal it saw and a digest of the request as it saw it (method, raw path, query, body).
  A replay therefore says whose answer it is.
- **Strategies** (:func:`scenarios`): a scenario is a few requests sharing a small pool of keys
  and principals: fresh requests and retries of earlier ones (unchanged, or with one thing
  changed), over keep-alive pipelines, their own connections, chunked bodies, bodies sent in
  pieces, connections cut mid-body or before the answer is read, and bursts of concurrent
  duplicates. Methods, raw paths and queries, header sets (duplicated, folded, huge,
  non-ASCII), keys (valid bare or quoted, malformed, duplicated), JSON and binary bodies.
- **Door drivers** (:func:`asgi_door`, :func:`wsgi_door`, :func:`gateway_door`, and
  :func:`drive`): one real server per door on loopback, and a raw-socket client that sends
  each request's bytes exactly as generated and pipelines what it can.
- **The invariant checker** (:class:`Checker`), after every scenario and once at the end:

  1. the door never answers 5xx on its own account (only when the app answered it or raised);
  2. one (principal, key) never executes twice while it is held, nor after an execution that
     answered below 500 (a completed key replays);
  3. a replay never reaches another principal or another request: the answer's embedded
     principal and digest are those of the request that got it, and it is marked replayed;
  4. a request with a malformed key on a covered method never executes;
  5. (known defect 2, being fixed) no replay carries a 408/425/429 or 5xx answer.

Principals: routes under ``/a/`` use the default policy (scope: ``Authorization``), all others
``Policy(scope=header_scope("X-Principal"))``, so the fuzzer does not depend on what the
default scope does for requests without a principal.

Input classes that trigger defects other engineers are fixing are generated only when asked
(``known=``, see :data:`KNOWN`); CI leaves them out so it stays green until the fixes land.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import socket
import threading
import traceback
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from hypothesis import strategies as st

from kit.gateway import serve_in_thread
from kit.servers import serve_asgi, serve_wsgi
from retrysafe._keys import parse_key
from retrysafe._policy import Policy
from retrysafe._scopes import header_scope
from retrysafe.errors import InvalidKey
from retrysafe.gateway import GatewayConfig, create_app
from retrysafe.gateway._config import RoutePolicy
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

PRINCIPAL_HEADER = "X-Principal"
ALT_KEY_HEADER = "X-Idempotency-Key"  # the ASGI/WSGI doors accept a second key header
MAX_BODY = 3000  # the ASGI/WSGI doors' max_body: bigger bodies are refused (413)
FUZZ_ID = "X-Fuzz-Id"
AUTH_PREFIX = "/a/"  # routes scoped by Authorization (the default policy)
MAX_CACHED = 4096  # the middlewares' max_cached_body: /big answers are kept unreplayable
COVERED = frozenset({"POST", "PATCH"})
METHODS = [("POST", 6), ("PATCH", 2), ("post", 1), ("Patch", 1), ("PUT", 1), ("GET", 1)]
METHODS.append(("DELETE", 1))
TRANSIENT = (408, 425, 429)
# A scenario's keys (after a per-scenario nonce): plain; with a quote and a backslash (the
# quoted form escapes them, the bare form does not: both are one key); with a comma (only
# the quoted form is a key, the bare one reads as a list); as long as a key may be.
LOGICAL_KEYS = {"k0": "k0", "k1": 'q"\\x', "k2": "c,d", "k3": "L" * 240}

# Input classes that hit defects being fixed in parallel (the Hardening issue's numbering).
# CI generates none of them; ``bench/fuzz.py --known`` does.
KNOWN = {
    "transient": "(2) 429/408/425 answers are stored",
    "query-order": "(3) query pairs sorted in the fingerprint",
    "path-escape": "(3) raw path decoded / invalid percent-escapes merged in the fingerprint",
    "dot-segment": "(4) gateway dot-segment routing bypass",
    "cut-body-wsgi": "(5) WSGI truncated bodies run and get stored",
    "framing-gateway": "gateway conflicting Content-Length + Transfer-Encoding framing",
}


# -- the request as the app sees it ------------------------------------------------------------


def digest(method: bytes, path: bytes, query: bytes, body: bytes) -> str:
    """What identifies a request to the app: length-framed method, path, query and body."""
    h = hashlib.sha256()
    for part in (method, path, query, body):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:32]


def principal_header(path: str) -> str:
    return "authorization" if path.startswith(AUTH_PREFIX) else PRINCIPAL_HEADER.lower()


def principal_of(path: str, value: str | None) -> str:
    """Who sent a request, as the app knows it: the header it is scoped by, and its value
    (absent and empty are both "nobody": each route's anonymous callers share one identity)."""
    return f"{principal_header(path)}={value or ''}"


def route_of(path: str) -> tuple[str, int]:
    """``/h/status/201/x`` -> ("status", 201): what the app does for ``path``."""
    parts = path.split("/")
    name = parts[2] if len(parts) > 2 else ""
    status = int(parts[3]) if name == "status" and len(parts) > 3 and parts[3].isdigit() else 0
    return name, status


# -- the recording app --------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    fuzz_id: str
    principal: str
    key: str | None
    digest: str
    status: int  # what the app answered; -1: it raised before answering
    start: int  # ticks of the recorder's clock: overlapping executions are visible
    end: int


class Recorder:
    """Every execution of the app, thread-safe, with a count of those still running.

    ``keep=False`` (long runs) forgets executions once :meth:`drain` has handed them over.
    """

    def __init__(self, keep: bool = True) -> None:
        self._cond = threading.Condition()
        self._tick = itertools.count()
        self.log: list[Execution] = []
        self.running = 0
        self.keep = keep
        self._drained = 0

    def enter(self) -> int:
        with self._cond:
            self.running += 1
            return next(self._tick)

    def leave(self, start: int, **fields: Any) -> None:
        with self._cond:
            self.log.append(Execution(start=start, end=next(self._tick), **fields))
            self.running -= 1
            self._cond.notify_all()

    def since(self, n: int, timeout: float = 10.0) -> list[Execution]:
        """Executions from the ``n``-th on, once none is running (bounded by ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self.running == 0, timeout)
            return self.log[n:]

    def drain(self, wait: bool = True, timeout: float = 10.0) -> list[Execution]:
        """Executions finished since the last drain (``wait``: once none is running)."""
        with self._cond:
            if wait:
                self._cond.wait_for(lambda: self.running == 0, timeout)
            found = self.log[self._drained :]
            if self.keep:
                self._drained = len(self.log)
            else:
                self.log = []
            return found


DELIBERATE = "the app failed (the fuzzer's /raise route)"


class CrashLog(logging.Handler):
    """Errors logged by the servers and by retrysafe, except the app's deliberate failures."""

    LOGGERS = ("uvicorn.error", "retrysafe", "retrysafe.gateway")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.crashes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and DELIBERATE in str(record.exc_info[1]):
            return
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.crashes.append(text)

    @contextlib.contextmanager
    def watching(self) -> Iterator[CrashLog]:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        try:
            yield self
        finally:
            for name in self.LOGGERS:
                logging.getLogger(name).removeHandler(self)


def _answer(fuzz_id: str, principal: str, key: str | None, seen: str, status: int) -> bytes:
    return json.dumps(
        {
            "app": "fuzz",
            "id": fuzz_id,
            "principal": principal,
            "key": key,
            "digest": seen,
            "status": status,
        }
    ).encode()


def _status_for(route: str, code: int) -> int:
    return code if route == "status" and 200 <= code <= 599 and code != 204 else 201


class RecordingASGI:
    """The app behind the ASGI door and the gateway's upstream.

    ``key_from="state"``: the key the middleware put in ``scope["state"]``; ``"header"``: the
    ``Idempotency-Key`` header parsed as the spec says (the gateway's upstream has no state).
    """

    def __init__(self, recorder: Recorder, key_from: str = "state") -> None:
        self.recorder, self.key_from = recorder, key_from

    def _key(self, scope: dict[str, Any]) -> str | None:
        if self.key_from == "state":
            state = scope.get("state") or {}
            key: str | None = state.get("idempotency_key")
            return key
        if scope["method"].upper() not in COVERED:
            return None
        lines = [v.decode("latin-1") for k, v in scope["headers"] if k == b"idempotency-key"]
        try:
            return parse_key(lines)
        except InvalidKey:
            return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left mid-body: nothing ran
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = scope["headers"]
        wanted = principal_header(path).encode()
        principal = principal_of(
            path, next((v.decode("latin-1") for k, v in headers if k == wanted), None)
        )
        fuzz_id = next((v.decode() for k, v in headers if k == b"x-fuzz-id"), "")
        seen = digest(
            scope["method"].encode(),
            scope.get("raw_path") or path.encode(),
            scope.get("query_string", b""),
            b"".join(chunks),
        )
        key = self._key(scope)
        route, code = route_of(path)
        start = self.recorder.enter()
        status = -1
        try:
            if route == "raise":
                raise RuntimeError(DELIBERATE)
            status = _status_for(route, code)
            body = _answer(fuzz_id, principal, key, seen, status)
            if route == "big":
                body = body[:-1] + b', "pad": "' + b"x" * (2 * MAX_CACHED) + b'"}'
            headers_out = [
                (b"content-type", b"application/json"),
                (b"set-cookie", b"fuzz=" + fuzz_id.encode()),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers_out})
            if route == "stream":  # several body messages, a yield between each
                for i in range(0, len(body), 64):
                    await send(
                        {"type": "http.response.body", "body": body[i : i + 64], "more_body": True}
                    )
                    await asyncio.sleep(0)
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": body})
        finally:
            self.recorder.leave(
                start, fuzz_id=fuzz_id, principal=principal, key=key, digest=seen, status=status
            )


class RecordingWSGI:
    """The app behind the WSGI door (the same routes and answers as :class:`RecordingASGI`)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = environ.get("CONTENT_LENGTH") or "0"
        body = environ["wsgi.input"].read(int(length)) if length.isdigit() else b""
        path = environ.get("PATH_INFO", "")
        name = "HTTP_" + principal_header(path).upper().replace("-", "_")
        principal = principal_of(path, environ.get(name))
        fuzz_id = environ.get("HTTP_X_FUZZ_ID", "")
        seen = digest(
            environ["REQUEST_METHOD"].encode("latin-1"),
            path.encode("latin-1"),
            environ.get("QUERY_STRING", "").encode("latin-1"),
            body,
        )
        key = environ.get("retrysafe.idempotency_key")
        route, code = route_of(path)
        start = self.recorder.enter()
        status = -1
        try:
            if route == "raise":
                raise RuntimeError(DELIBERATE)
            status = _status_for(route, code)
            answer = _answer(fuzz_id, principal, key, seen, status)
            if route == "big":
                answer = answer[:-1] + b', "pad": "' + b"x" * (2 * MAX_CACHED) + b'"}'
            headers_out = [("Content-Type", "application/json"), ("Set-Cookie", f"fuzz={fuzz_id}")]
            start_response(f"{status} Fuzz", headers_out)
            if route == "stream":
                return [answer[i : i + 64] for i in range(0, len(answer), 64)]
            return [answer]
        finally:
            self.recorder.leave(
                start, fuzz_id=fuzz_id, principal=principal, key=key, digest=seen, status=status
            )


# -- doors --------------------------------------------------------------------------------------


@dataclass
class Door:
    """A running door: its URL, the recorder of the app behind it, the errors its servers
    logged."""

    kind: str  # "asgi", "wsgi" or "gateway"
    url: str
    recorder: Any  # Recorder, or a proxy to one in another process (bench/fuzz.py)
    crashes: CrashLog = field(default_factory=CrashLog)

    @property
    def pipelines(self) -> bool:  # wsgiref answers one request per connection (HTTP/1.0)
        return self.kind != "wsgi"

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


def fuzz_policy(scope_by_authorization: bool, **changes: Any) -> Policy:
    """The fuzzed middlewares' policy: scoped by X-Principal, or the default (Authorization).

    ``changes`` plant defects, to check that the fuzzer finds them.
    """
    base = Policy(
        max_cached_body=MAX_CACHED,
        max_body=MAX_BODY,
        header_names=("Idempotency-Key", ALT_KEY_HEADER),
    )
    if not scope_by_authorization:
        base = base.replace(scope=header_scope(PRINCIPAL_HEADER))
    return base.replace(**changes) if changes else base


def _routed(by_auth: Any, by_header: Any) -> Any:
    """One app, two policies: ``/a/...`` scoped by Authorization, the rest by X-Principal."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        chosen = by_auth if scope["path"].startswith(AUTH_PREFIX) else by_header
        await chosen(scope, receive, send)

    return app


@contextlib.contextmanager
def asgi_door(keep: bool = True, **planted: Any) -> Iterator[Door]:
    """The ASGI middleware (memory store) under uvicorn (``planted``: policy changes)."""
    recorder = Recorder(keep)
    app, store = RecordingASGI(recorder), MemoryStore()
    routed = _routed(
        ASGIIdempotencyMiddleware(app, store=store, policy=fuzz_policy(True, **planted)),
        ASGIIdempotencyMiddleware(app, store=store, policy=fuzz_policy(False, **planted)),
    )
    with serve_asgi(routed) as url, CrashLog().watching() as crashes:
        yield Door("asgi", url, recorder, crashes)


@contextlib.contextmanager
def wsgi_door(keep: bool = True) -> Iterator[Door]:
    """The WSGI middleware (memory store) under the threaded wsgiref server."""
    recorder = Recorder(keep)
    app, store = RecordingWSGI(recorder), MemoryStore()
    by_auth = WSGIIdempotencyMiddleware(app, store=store, policy=fuzz_policy(True))
    by_header = WSGIIdempotencyMiddleware(app, store=store, policy=fuzz_policy(False))

    def routed(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        return (by_auth if path.startswith(AUTH_PREFIX) else by_header)(environ, start_response)

    with serve_wsgi(routed) as url, CrashLog().watching() as crashes:
        yield Door("wsgi", url, recorder, crashes)


@contextlib.contextmanager
def gateway_door(keep: bool = True) -> Iterator[Door]:
    """``retrysafe.gateway`` (memory store) in front of the recording app as its upstream."""
    recorder = Recorder(keep)
    with serve_asgi(RecordingASGI(recorder, key_from="header")) as upstream:
        config = GatewayConfig(
            upstream=upstream,
            store="memory://",
            policy=RoutePolicy(scope_header=PRINCIPAL_HEADER),
            routes=(RoutePolicy(path=AUTH_PREFIX.rstrip("/"), scope_header="Authorization"),),
        )
        with serve_in_thread(create_app(config)) as url, CrashLog().watching() as crashes:
            yield Door("gateway", url, recorder, crashes)


DOORS = {"asgi": asgi_door, "wsgi": wsgi_door, "gateway": gateway_door}


# -- what is generated --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    kind: str  # "none", "bare", "quoted", "malformed", "duplicate"
    logical: str = ""  # valid kinds: which of the scenario's keys
    raw: str = ""  # malformed: the header value as sent
    name: str = "Idempotency-Key"  # the header name's spelling

    @property
    def malformed(self) -> bool:
        return self.kind in ("malformed", "duplicate", "both")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # raw, as sent
    query: str  # raw, as sent ("" for none)
    principals: tuple[str, ...]  # the principal header's lines
    key: KeySpec
    headers: tuple[tuple[bytes, bytes], ...]  # extra header lines
    body: bytes
    framing: str  # "length", "chunked", "chunked-ext", "both" (CL and TE) or "none"
    chunks: tuple[int, ...] = ()  # chunked: sizes to cut the body at
    form: str = "origin"  # the request-target: "origin", "absolute", "double-slash", "relative"
    version: str = "HTTP/1.1"  # or "HTTP/1.0" (the server closes the connection after it)

    @property
    def target(self) -> str:
        if self.form == "absolute":
            return "http://fuzz.test" + self.path
        if self.form == "relative":
            return self.path[1:]
        return "/" + self.path if self.form == "double-slash" else self.path

    @property
    def hostile(self) -> bool:
        """Whether the server may refuse the framing and drop the connection."""
        return (
            self.version != "HTTP/1.1"
            or any(
                len(v) > 4000 or b"\r\n" in v or any(c >= 0x80 for c in v) for _, v in self.headers
            )
            or any(any(ord(c) >= 0x80 for c in p) for p in self.principals)
        )


@dataclass(frozen=True)
class Step:
    request: Request
    delivery: str  # "pipeline", "own", "split", "cut-body", "cut-response", "cut-mid-response",
    # or "burst"
    copies: int = 1  # "burst": concurrent duplicates on their own connections
    others: tuple[Request, ...] = ()  # "burst": variants racing the first instead of copies


@dataclass(frozen=True)
class Scenario:
    steps: tuple[Step, ...]


def pick(*choices: tuple[Any, int]) -> st.SearchStrategy[Any]:
    """One of ``choices`` by weight, the likeliest first.

    Hypothesis leans to the ends and to small values of whatever range it draws from, which
    would make rare choices common; a multiplicative hash spreads its draws evenly over the
    weights, and 0 (what it shrinks to) still picks the first choice.
    """
    values = [value for value, weight in choices for _ in range(weight)]
    spread = st.integers(0, 0xFFFF).map(lambda i: (i * 40503) & 0xFFFF)
    return spread.map(lambda j: values[j * len(values) >> 16])


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~", max_size=12)
_QCHARS = st.text("abcxyz019-_.~+", max_size=6)
_MALFORMED = st.sampled_from(
    [
        "",
        "a b",
        "a,b",
        "a\tb",
        '"unterminated',
        '"bad\\x"',
        '"a" b',
        "k" * 256,
        "caf\xe9",
        "\x7f",
    ]
)
_NOISE = st.sampled_from(
    [
        (b"X-Noise", b"1"),
        (b"X-Latin", bytes(range(0xA0, 0xB0))),
        (b"X-Huge", b"h" * 9000),
        (b"X-Huger", b"H" * 20000),
        (b"X-Folded", b"one\r\n two"),
        (b"X-Dup", b"a"),
        (b"Accept", b"*/*"),
        (b"Content-Type", b"application/json"),
        (b"Cookie", b"session=s1"),
        (b"Connection", b"x-noise"),
        (b"Expect", b"100-continue"),
    ]
)
_BODY = st.one_of(
    st.just(b""),
    st.dictionaries(_TOKEN, st.one_of(st.integers(), _TOKEN, st.booleans()), max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=64),
    st.binary(min_size=1000, max_size=5000),
)
_PRINCIPALS = pick(
    (("alice",), 4),
    (("bob",), 3),
    ((), 2),
    (("",), 1),
    (("alice", "bob"), 1),
    (("bob", "alice"), 1),
    (("al\xefce",), 1),
)


@st.composite
def paths(draw: st.DrawFn, known: frozenset[str]) -> str:
    prefix = draw(st.sampled_from(["/h/", AUTH_PREFIX]))
    route = draw(pick(("ok", 6), ("status", 4), ("stream", 2), ("raise", 1), ("big", 1)))
    path = prefix + route
    if route == "status":
        codes = [200, 201, 202, 400, 404, 409, 422, 500, 500, 500, 503]
        if "transient" in known:
            codes += list(TRANSIENT)
        path += f"/{draw(st.sampled_from(codes))}"
    segments = ["x", "x.y", "~u", "a-b", "", "%41", "%2F"]
    if "path-escape" in known:
        segments += ["%2f", "%zz", "%", "%C3%A9"]
    if "dot-segment" in known:
        segments += ["..", "."]
    allowed = [s for s in segments if "%" not in s or "path-escape" in known]
    for segment in draw(st.lists(st.sampled_from(allowed), max_size=3)):
        path += "/" + segment
    return path


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(_QCHARS, _QCHARS), max_size=3))
    return "&".join(f"{k}={v}" for k, v in pairs)


@st.composite
def keys(draw: st.DrawFn, door: str) -> KeySpec:
    kinds = [("bare", 5), ("quoted", 2), ("padded", 1), ("none", 2), ("malformed", 2)]
    kinds.append(("duplicate", 1))
    names = ["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"]
    if door != "gateway":  # the gateway's routes have one key header
        kinds.append(("both", 1))
        names.append(ALT_KEY_HEADER)
    kind = draw(pick(*kinds))
    name = draw(st.sampled_from(names))
    logical = draw(st.sampled_from(sorted(LOGICAL_KEYS)))
    raw = draw(_MALFORMED) if kind == "malformed" else ""
    return KeySpec(kind, logical, raw, name)


def framings(door: str, known: frozenset[str]) -> st.SearchStrategy[str]:
    found = ["length", "length", "length", "chunked", "chunked-ext", "none"]
    if door != "gateway" or "framing-gateway" in known:
        found.append("both")
    return st.sampled_from(found)


@st.composite
def requests(draw: st.DrawFn, door: str, known: frozenset[str]) -> Request:
    body = draw(_BODY)
    framing = draw(framings(door, known))
    if framing == "none":
        body = b""
    chunks: tuple[int, ...] = ()
    if framing in ("chunked", "chunked-ext", "both"):
        chunks = tuple(draw(st.lists(st.integers(1, 300), max_size=4)))
    return Request(
        method=draw(pick(*METHODS)),
        path=draw(paths(known)),
        query=draw(queries()),
        principals=draw(_PRINCIPALS),
        key=draw(keys(door)),
        headers=tuple(draw(st.lists(_NOISE, max_size=3))),
        body=body,
        framing=framing,
        chunks=chunks,
        form=draw(st.sampled_from(["origin"] * 8 + ["absolute", "double-slash", "relative"])),
        version=draw(st.sampled_from(["HTTP/1.1"] * 9 + ["HTTP/1.0"])),
    )


def _mutations(known: frozenset[str]) -> st.SearchStrategy[str]:
    found = [("same", 4), ("principal", 3), ("body", 2), ("query", 1), ("path", 1), ("method", 1)]
    found += [("framing", 1), ("key-form", 1)]
    if "query-order" in known:
        found.append(("query-order", 1))
    return pick(*found)


@st.composite
def retried(draw: st.DrawFn, earlier: Request, door: str, known: frozenset[str]) -> Request:
    """``earlier`` again, unchanged or with one thing changed."""
    change = draw(_mutations(known))
    r = earlier
    if change == "principal":
        return _with(r, principals=draw(_PRINCIPALS))
    if change == "body":
        return _with(r, body=draw(_BODY), framing="length")
    if change == "query":
        return _with(r, query=draw(queries()))
    if change == "path":
        return _with(r, path=draw(paths(known)))
    if change == "method":
        return _with(r, method=draw(st.sampled_from(["POST", "PATCH", "PUT", "post"])))
    if change == "framing" and r.body:
        chunks = tuple(draw(st.lists(st.integers(1, 300), max_size=4)))
        return _with(r, framing=draw(framings(door, known)), chunks=chunks)
    if change == "key-form" and r.key.kind in ("bare", "quoted", "padded"):
        kind = draw(st.sampled_from(["bare", "quoted", "padded"]))
        return _with(r, key=KeySpec(kind, r.key.logical, "", r.key.name))
    if change == "query-order" and "&" in r.query:
        return _with(r, query="&".join(reversed(r.query.split("&"))))
    return r


def _with(r: Request, **changes: Any) -> Request:
    fields = {**r.__dict__, **changes}
    return Request(**fields)


@st.composite
def scenarios(draw: st.DrawFn, door: str, known: frozenset[str] = frozenset()) -> Scenario:
    """A few requests over two keys and a few principals, fresh ones and retries."""
    deliveries = [("pipeline", 6), ("burst", 2), ("own", 1), ("split", 1), ("cut-response", 1)]
    deliveries.append(("cut-mid-response", 1))
    if door != "wsgi" or "cut-body-wsgi" in known:
        deliveries.append(("cut-body", 1))
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 8))):
        if steps and draw(st.integers(0, 3)):  # mostly retries of earlier requests
            request = draw(retried(draw(st.sampled_from(steps)).request, door, known))
        else:
            request = draw(requests(door, known))
        delivery = draw(pick(*deliveries))
        if delivery == "cut-body" and not request.body:
            delivery = "own"
        copies = draw(st.integers(2, 4)) if delivery == "burst" else 1
        others: tuple[Request, ...] = ()
        if delivery == "burst" and draw(st.booleans()):  # racing variants, not just copies
            others = tuple(draw(retried(request, door, known)) for _ in range(copies - 1))
        steps.append(Step(request, delivery, copies, others))
    return Scenario(tuple(steps))


# -- rendering and sending ----------------------------------------------------------------------

_ids = itertools.count()
_lock = threading.Lock()


def next_id() -> str:
    with _lock:
        return f"f{next(_ids)}"


@dataclass
class Sent:
    """One request as sent, with what the app should see of it and what came back."""

    fuzz_id: str
    request: Request
    key: str | None  # the full key, if valid
    malformed: bool  # key headers that are not one valid key
    principal: str | None  # as the app should see it
    digest: str  # of the request as the app should see it
    delivery: str
    wire: bytes = b""
    response: Any = None  # RawResponse or None
    error: str = ""


def render(r: Request, fuzz_id: str, nonce: str) -> tuple[bytes, str | None]:
    """The request's bytes, and its key if it carries a valid one."""
    lines = [f"{r.method} {r.target}{'?' + r.query if r.query else ''} {r.version}".encode()]
    lines.append(b"Host: fuzz.test")
    lines.append(f"{FUZZ_ID}: {fuzz_id}".encode())
    for name, value in principal_lines(r):
        lines.append(name.encode() + b": " + value.encode("latin-1"))
    key = None
    k = r.key
    if k.kind in ("bare", "quoted", "padded", "duplicate", "both"):
        key = f"{nonce}-{LOGICAL_KEYS[k.logical]}"
        value = key
        if k.kind == "quoted":
            value = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif k.kind == "padded":  # optional whitespace around a field value is not part of it
            value = f" \t{key}\t "
        lines.append(f"{k.name}: {value}".encode())
        if k.kind == "duplicate":
            lines.append(f"{k.name}: {value}".encode())
        if k.kind == "both":
            lines.append(f"{ALT_KEY_HEADER}: {value}".encode())
        if k.malformed or (k.kind != "quoted" and "," in key):
            key = None
    elif k.kind == "malformed":
        lines.append(k.name.encode() + b": " + k.raw.encode("latin-1"))
    for name, value in r.headers:
        lines.append(name + b": " + value)
    payload = _payload(r)
    if r.framing in ("length", "both"):
        lines.append(f"Content-Length: {len(payload)}".encode())
    if r.framing in ("chunked", "chunked-ext", "both"):
        lines.append(b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload, key


def malformed(r: Request, key: str | None) -> bool:
    """Whether ``r`` carries key headers that do not make one valid key."""
    return r.key.kind != "none" and key is None


def _payload(r: Request) -> bytes:
    """The body as framed on the wire."""
    if r.framing == "length":
        return r.body
    if r.framing == "none":
        return b""
    ext = r.framing == "chunked-ext"  # chunk extensions and a trailer, which mean nothing
    out, i = [], 0
    for size in (*r.chunks, len(r.body)):
        part = r.body[i : i + size]
        i += len(part)
        if part:
            out.append(b"%x%s\r\n%s\r\n" % (len(part), b";x=y" if ext else b"", part))
        if i >= len(r.body):
            break
    out.append(b"0\r\nX-Trailer: t\r\n\r\n" if ext else b"0\r\n\r\n")
    return b"".join(out)


def seen_path(door: str, target: str) -> tuple[str, bytes]:
    """The path the app behind ``door`` routes on, and the raw path it digests."""
    if door == "wsgi":  # http.server folds a leading "//"; PATH_INFO is percent-decoded
        if target.startswith("//"):
            target = "/" + target.lstrip("/")
        path = unquote(target, "iso-8859-1")
        return path, path.encode("latin-1")
    return unquote(target), target.encode()  # uvicorn: raw_path as sent


def app_view(door: str, r: Request) -> tuple[str, str]:
    """The principal and the request digest the app behind ``door`` should see for ``r``."""
    path, raw = seen_path(door, r.target)
    lines = principal_lines(r) if principal_header(path) == principal_header(r.path) else []
    if door == "wsgi":  # wsgiref joins repeated lines with ","; only Content-Length frames
        value = ",".join(v for _, v in lines) if lines else None
        body = _payload(r) if r.framing in ("length", "both") else b""
    else:
        value = lines[0][1] if lines else None
        body = b"" if r.framing == "none" else r.body
    principal = principal_of(path, value)
    return principal, digest(r.method.encode(), raw, r.query.encode("latin-1"), body)


def principal_lines(r: Request) -> list[tuple[str, str]]:
    """The principal header lines ``r`` carries (named after the route it means to reach)."""
    if principal_header(r.path) == "authorization":
        return [("Authorization", "Bearer " + p if p else "") for p in r.principals]
    return [(PRINCIPAL_HEADER, p) for p in r.principals]


# -- the client ---------------------------------------------------------------------------------


class Conn:
    """A raw client connection that reads responses as they come (see kit.servers.RawClient)."""

    def __init__(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        chunk = self.sock.recv(262144)
        self.buf += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise ConnectionError("closed mid-line")
        line, self.buf = self.buf[:i], self.buf[i + 2 :]
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed mid-body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> Response | None:
        try:
            return self._response()
        except (ConnectionError, OSError, ValueError):
            return None

    def _response(self) -> Response:
        status_line = self._line()
        status = int(status_line.split()[1])
        if 100 <= status < 200:  # an interim answer: the real one follows
            while self._line():
                pass
            return self._response()
        headers: list[tuple[str, str]] = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        found = dict(headers)
        if "chunked" in found.get("transfer-encoding", ""):
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._exactly(size))
                self._line()
            while self._line():
                pass
            body = b"".join(parts)
        elif "content-length" in found:
            body = self._exactly(int(found["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(status, found, body)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def doc(self) -> dict[str, Any] | None:
        """The app's answer, if this is one."""
        if not self.body.startswith(b'{"app": "fuzz"'):
            return None
        try:
            found: dict[str, Any] = json.loads(self.body)
        except ValueError:
            return None
        return found


def _prepare(door: Door, step: Step, nonce: str) -> Sent:
    fuzz_id = next_id()
    wire, key = render(step.request, fuzz_id, nonce)
    principal, seen = app_view(door.kind, step.request)
    malformed_key = malformed(step.request, key)
    return Sent(fuzz_id, step.request, key, malformed_key, principal, seen, step.delivery, wire)


def _exchange_own(door: Door, sent: Sent) -> None:
    conn = Conn(door.address)
    try:
        if sent.delivery == "split":
            for i in range(0, len(sent.wire), 7):
                conn.sock.sendall(sent.wire[i : i + 7])
        elif sent.delivery == "cut-body":
            cut = len(sent.wire) - max(1, len(sent.request.body) // 2)
            conn.sock.sendall(sent.wire[:cut])
            conn.sock.shutdown(socket.SHUT_WR)
            sent.response = conn.response()
            return
        else:
            conn.sock.sendall(sent.wire)
        if sent.delivery == "cut-response":
            return  # closed below without reading: the client is gone before the answer
        if sent.delivery == "cut-mid-response":
            conn.sock.recv(1)  # the answer has begun: close in the middle of it
            return
        sent.response = conn.response()
    except OSError as exc:
        sent.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def drive(door: Door, scenario: Scenario, nonce: str) -> list[Sent]:
    """Send ``scenario``'s steps in order; consecutive pipelineable steps share a connection."""
    done: list[Sent] = []
    batch: list[Sent] = []

    def flush() -> None:
        if not batch:
            return
        conn = Conn(door.address)
        try:
            conn.sock.sendall(b"".join(s.wire for s in batch))
            closed = ""
            for s in batch:
                if closed:  # the server closed the pipeline after an earlier answer
                    s.error = closed
                    continue
                s.response = conn.response()
                if s.response is None:
                    closed = f"no answer: the pipeline broke at {s.fuzz_id}"
                elif s.response.headers.get("connection", "").lower() == "close":
                    closed = f"the server closed the pipeline after {s.fuzz_id}"
        except OSError as exc:
            batch[0].error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        done.extend(batch)
        batch.clear()

    for step in scenario.steps:
        if step.delivery == "pipeline" and door.pipelines and not step.request.hostile:
            batch.append(_prepare(door, step, nonce))
            continue
        flush()
        if step.delivery == "burst":
            variants = [step.request, *step.others] if step.others else [step.request] * step.copies
            copies = [_prepare(door, Step(v, "burst"), nonce) for v in variants]
            for s in copies:
                s.delivery = "own"
            threads = [threading.Thread(target=_exchange_own, args=(door, s)) for s in copies]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for s in copies:
                s.delivery = "burst"
            done.extend(copies)
        else:
            sent = _prepare(door, step, nonce)
            if sent.delivery == "pipeline":
                sent.delivery = "own"
            _exchange_own(door, sent)
            done.extend([sent])
    flush()
    return done


# -- the invariants -----------------------------------------------------------------------------


@dataclass
class Violation:
    invariant: str
    detail: str
    sent: Sent | None = None

    def __str__(self) -> str:
        text = f"[{self.invariant}] {self.detail}"
        if self.sent is not None:
            s = self.sent
            text += f"\n    request {s.fuzz_id} ({s.delivery}): {s.wire[:600]!r}"
            if self.sent.response is not None:
                r = self.sent.response
                text += f"\n    response {r.status} {r.body[:300]!r}"
        return text


@dataclass
class Checker:
    """Checks every response as it comes and every execution once the app is idle."""

    door: str
    sent: dict[str, Sent] = field(default_factory=dict)
    executed: int = 0
    by_slot: dict[tuple[str | None, str], list[Execution]] = field(
        default_factory=lambda: defaultdict(list)
    )
    violations: list[Violation] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    requests: int = 0
    replays: int = 0
    # Long runs: forget what no check needs any more (a window of the latest requests and keys).
    slim: bool = False
    WINDOW = 50_000

    def responses(self, batch: Sequence[Sent]) -> list[Violation]:
        found: list[Violation] = []
        for s in batch:
            self.requests += 1
            self.sent[s.fuzz_id] = s
            before = len(found)
            found.extend(self._response(s))
            if self.slim and len(found) == before:  # nothing to show: keep what settle needs
                s.wire, s.response = b"", None
        if self.slim:
            for memory in (self.sent, self.by_slot):
                while len(memory) > self.WINDOW:
                    del memory[next(iter(memory))]
        self.violations.extend(found)
        return found

    def _response(self, s: Sent) -> Iterator[Violation]:
        r = s.response
        route, _ = route_of(s.request.path)
        if r is None:
            cut = s.delivery in ("cut-body", "cut-response", "cut-mid-response")
            wellformed = not cut and not s.request.hostile
            if wellformed and not s.error and route != "raise":
                yield Violation("no-answer", "the connection closed without an answer", s)
            return
        self.statuses[r.status] += 1
        doc = r.doc()
        if r.status >= 500 and doc is None and route != "raise":
            yield Violation("own-5xx", f"the door answered {r.status} on its own account", s)
        if doc is None:
            return
        if doc["id"] != s.fuzz_id:
            self.replays += 1
            if r.headers.get("idempotent-replayed") != "true":
                yield Violation("unmarked", f"answered with {doc['id']}'s answer, unmarked", s)
            if "set-cookie" in r.headers:
                yield Violation("replayed-cookie", "a replay carried the original's Set-Cookie", s)
            if doc["principal"] != s.principal:
                yield Violation(
                    "cross-principal",
                    f"{s.principal!r} got the answer made for {doc['principal']!r}",
                    s,
                )
            if doc["digest"] != s.digest:
                yield Violation("cross-request", f"got {doc['id']}'s answer to another request", s)
            if doc["key"] != s.key:
                yield Violation("cross-key", f"key {s.key!r} got {doc['key']!r}'s answer", s)
            if doc["status"] >= 500 or doc["status"] in TRANSIENT:
                yield Violation("stored-transient", f"a {doc['status']} answer was replayed", s)
        elif doc["digest"] != s.digest or doc["principal"] != s.principal:
            yield Violation("altered", "the app saw another request than the one sent", s)
        if r.status != doc["status"]:
            yield Violation("status", f"answered {r.status}, the app said {doc['status']}", s)

    def settle(self, recorder: Any, wait: bool = True) -> list[Violation]:
        """Check executions the app finished since the last call (``wait``: until it is idle)."""
        found: list[Violation] = []
        for e in recorder.drain(wait):
            self.executed += 1
            s = self.sent.get(e.fuzz_id)
            if s is not None and s.malformed and s.request.method in COVERED:
                found.append(Violation("malformed-ran", "a malformed key executed", s))
            if e.key is None:
                continue
            slot = self.by_slot[(e.principal, e.key)]
            for before in slot:
                if e.start < before.end and before.start < e.end:
                    found.append(self._twice(e, before, "ran concurrently with"))
                elif before.status >= 0 and before.status < 500 and before.status not in TRANSIENT:
                    found.append(self._twice(e, before, "ran again after"))
            slot.append(e)
        self.violations.extend(found)
        return found

    def _twice(self, e: Execution, before: Execution, how: str) -> Violation:
        detail = f"{e.fuzz_id} {how} {before.fuzz_id} (key {e.key!r}, principal {e.principal!r})"
        return Violation("ran-twice", detail, self.sent.get(e.fuzz_id))


_nonces = itertools.count()


def run_scenario(door: Door, checker: Checker, scenario: Scenario) -> list[Violation]:
    """Drive one scenario through ``door`` and check it; returns the new violations."""
    nonce = f"n{next(_nonces)}"
    found = checker.responses(drive(door, scenario, nonce))
    found += checker.settle(door.recorder)
    return found
