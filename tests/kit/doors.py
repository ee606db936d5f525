"""Drive the ASGI and WSGI middlewares the same way, so each SPEC rule is written once.

A test describes the application as a *behaviour*: a plain function from what the handler saw
(:class:`Seen`) to what it answers (:class:`Out`), which may block on an event the test controls
or raise. A :class:`Door` turns that behaviour into an application behind one of the
middlewares and sends requests at it:

- ``asgi``       a raw ASGI app, driven by raw ASGI calls with a recording ``send``;
- ``starlette``  a Starlette app, driven through ``httpx.ASGITransport``;
- ``wsgi``       a raw WSGI app, driven with a hand-built environ (as a WSGI server would);
- ``flask``      a Flask app, driven with werkzeug's test client.

Every door answers a :class:`Reply`. An exception that escapes the application before a
response started is reported as a 500 with ``error`` set, as a server would answer.

:class:`SpyStore` wraps a real store: it counts operations, lets a test wait until one
happened (a duplicate started waiting, a heartbeat renewed), and can be switched "down" so
every operation raises :class:`StoreUnavailable` (SPEC 17).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import flask
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from retrysafe import current_key
from retrysafe._policy import PROBLEM_BASE_URI, Policy, Problem
from retrysafe._problems import TITLES
from retrysafe._records import ClaimResult, Record, StoredResponse
from retrysafe._scopes import shared_scope
from retrysafe.errors import StoreUnavailable
from retrysafe.http import ENVIRON_KEY, ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware

HeaderValue = str | bytes
HeaderPairs = Sequence[tuple[str, HeaderValue]]
BODY_READ = 7  # apps read request bodies this many bytes at a time (SPEC 16: re-fed in chunks)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# -- the application side ---------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What the handler saw of one request."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reads: int  # how many non-empty chunks the app read the body in
    state_key: str | None  # request.state.idempotency_key / environ["retrysafe.idempotency_key"]
    context_key: str | None  # retrysafe.current_key() inside the handler

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @classmethod
    def read(
        cls,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        chunks: list[bytes],
        state_key: str | None,
    ) -> Seen:
        """What an app saw, the body read in ``chunks``; called inside the handler, where
        ``current_key()`` answers."""
        return cls(
            method,
            path,
            query,
            tuple(headers),
            b"".join(chunks),
            len(chunks),
            state_key,
            current_key(),
        )


@dataclass
class Out:
    """What the handler answers; ``body`` may be an iterable of chunks (a streamed response)."""

    status: int = 201
    body: bytes | Iterable[bytes] = b""
    headers: list[tuple[str, str]] = field(
        default_factory=lambda: [("content-type", "application/json")]
    )


Behaviour = Callable[[Seen, int], Out]  # (what it saw, 1-based run number) -> answer


def created(seen: Seen, run: int) -> Out:
    """The default behaviour: 201 with headers a replay must (and must not) repeat (SPEC 8)."""
    body = json.dumps({"run": run, "echo": seen.body.decode("latin-1")}).encode()
    return Out(
        201,
        body,
        [
            ("content-type", "application/json"),
            ("location", f"/things/{run}"),
            ("content-location", f"/things/{run}"),
            ("etag", f'"v{run}"'),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("link", '</things>; rel="collection"'),
            ("set-cookie", f"session=s{run}; Path=/"),
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("x-request-id", f"req-{run}"),
            ("x-ratelimit-remaining", str(100 - run)),
            ("x-custom", f"custom-{run}"),
        ],
    )


class Handler:
    """Runs a behaviour and remembers every call (thread-safe); ``runs`` is the count."""

    def __init__(self, behaviour: Behaviour = created) -> None:
        self.behaviour = behaviour
        self.calls: list[Seen] = []
        self._lock = threading.Lock()

    @property
    def runs(self) -> int:
        with self._lock:
            return len(self.calls)

    def __call__(self, seen: Seen) -> Out:
        with self._lock:
            self.calls.append(seen)
            run = len(self.calls)
        return self.behaviour(seen, run)


class Gate:
    """A behaviour that blocks until the test opens the gate (never a sleep).

    ``entered`` is set when a run starts; the run then waits for ``opened`` and answers with
    ``then`` (default :func:`created`).
    """

    def __init__(self, then: Behaviour = created, timeout: float = 10.0) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.then = then
        self.timeout = timeout

    def __call__(self, seen: Seen, run: int) -> Out:
        self.entered.set()
        if not self.opened.wait(self.timeout):
            raise TimeoutError("the test never opened the gate")
        return self.then(seen, run)


async def until(event: threading.Event, timeout: float = 5.0) -> None:
    """Wait for a thread event without blocking the event loop."""
    assert await asyncio.to_thread(event.wait, timeout), "timed out waiting for an event"


# -- the client side ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes
    error: BaseException | None = None  # the app raised before answering (reported as 500)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    @property
    def replayed(self) -> bool:
        return self.header("idempotent-replayed") == "true"

    def json(self) -> Any:
        return json.loads(self.body)


def assert_problem(reply: Reply, problem: Problem, status: int | None = None) -> dict[str, Any]:
    """``reply`` is the RFC 9457 problem the policy names for ``problem`` (SPEC 18)."""
    expected = status if status is not None else Policy(scope=shared_scope).problem_status[problem]
    assert reply.status == expected, (reply.status, reply.body)
    assert reply.header("content-type") == "application/problem+json"
    doc = reply.json()
    assert doc["type"] == PROBLEM_BASE_URI + problem.value
    assert doc["title"] == TITLES[problem]
    assert doc["status"] == expected
    assert isinstance(doc["detail"], str)
    assert doc["detail"]
    assert not reply.replayed
    assert reply.header("content-length") == str(len(reply.body))
    return doc  # type: ignore[no-any-return]


def _text(value: HeaderValue) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _raw(value: HeaderValue) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _decoded(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Raw header lines as a ``Reply`` holds them: latin-1 text, names lower-cased."""
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers]


def _pieces(body: bytes, n: int = 4) -> list[bytes]:
    """``body`` cut into ``n`` roughly equal non-empty pieces (at least one piece)."""
    if not body:
        return [b""]
    size = max(1, -(-len(body) // n))
    return [body[i : i + size] for i in range(0, len(body), size)]


@dataclass(frozen=True)
class Sent:
    """One request as a door sends it. ``chunked``: the body in several pieces, no length."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, HeaderValue]]
    body: bytes
    chunked: bool


class Door:
    """An application behind one of the middlewares, and a way to send it requests."""

    name = "door"

    def __init__(self, handler: Handler, store: Any, policy: Policy) -> None:
        self.handler = handler
        self.store = store
        self.policy = policy

    async def request(
        self,
        method: str = "POST",
        path: str = "/things",
        *,
        key: str | bytes | None = None,
        headers: HeaderPairs = (),
        body: bytes = b"",
        query: str = "",
        chunked: bool = False,
    ) -> Reply:
        """Send one request. ``key`` adds an ``Idempotency-Key`` line; ``chunked`` sends the body
        in several pieces without a Content-Length."""
        pairs: list[tuple[str, HeaderValue]] = list(headers)
        if key is not None:
            pairs.append(("Idempotency-Key", key))
        return await self._send(Sent(method, path, query, pairs, body, chunked))

    async def post(self, key: str | bytes | None = None, body: bytes = b"{}", **kw: Any) -> Reply:
        return await self.request("POST", key=key, body=body, **kw)

    async def _send(self, req: Sent) -> Reply:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the door opened."""


# ASGI --------------------------------------------------------------------------------------


def asgi_app(handler: Handler) -> Callable[..., Any]:
    """A raw ASGI app that reads its body message by message and runs ``handler`` in a thread
    (so a behaviour may block on a thread event without stalling the event loop)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                chunks.append(message["body"])
            if not message.get("more_body", False):
                break
        seen = Seen.read(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]),
            chunks,
            (scope.get("state") or {}).get("idempotency_key"),
        )
        out = await asyncio.to_thread(handler, seen)
        await send(
            {
                "type": "http.response.start",
                "status": out.status,
                "headers": [(k.encode(), v.encode()) for k, v in out.headers],
            }
        )
        if isinstance(out.body, bytes):
            await send({"type": "http.response.body", "body": out.body})
            return
        chunks = iter(out.body)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


class RawASGIDoor(Door):
    """Raw ASGI calls against ``ASGIIdempotencyMiddleware(asgi_app(handler))``."""

    name = "asgi"

    def __init__(self, handler: Handler, store: Any, policy: Policy) -> None:
        super().__init__(handler, store, policy)
        self.app = ASGIIdempotencyMiddleware(asgi_app(handler), store=store, policy=policy)

    async def _send(self, req: Sent) -> Reply:
        raw = [(k.lower().encode("latin-1"), _raw(v)) for k, v in req.headers]
        # A server hands a body over in several messages, with or without a declared length.
        pieces = _pieces(req.body)
        if req.chunked:
            raw.append((b"transfer-encoding", b"chunked"))
        else:
            raw.append((b"content-length", str(len(req.body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": req.method,
            "scheme": "http",
            "path": req.path,
            "raw_path": req.path.encode(),
            "query_string": req.query.encode(),
            "root_path": "",
            "headers": [(b"host", b"testserver"), *raw],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        incoming = [
            {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
            for i, piece in enumerate(pieces)
        ]
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if incoming:
                return incoming.pop(0)
            await done.wait()  # the client stays connected until the response is complete
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            assert not done.is_set(), f"message after the response ended: {message}"
            if message["type"] == "http.response.start":
                assert not sent, "http.response.start sent twice"
            else:
                assert sent, "body before http.response.start"
                if not message.get("more_body", False):
                    done.set()
            sent.append(message)

        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if sent:
                raise
            return Reply(500, [], b"", exc)
        finally:
            done.set()
        assert sent, "the middleware answered nothing"
        assert sent[-1]["type"] == "http.response.body"
        assert not sent[-1].get("more_body", False), "the response never ended"
        start = sent[0]
        return Reply(
            start["status"],
            _decoded(start["headers"]),
            b"".join(m.get("body", b"") for m in sent[1:]),
        )


def starlette_app(handler: Handler, store: Any, policy: Policy) -> Starlette:
    """A Starlette app with the middleware; the endpoint reads its body with ``stream()``."""

    async def endpoint(request: Request) -> Response:
        chunks = [chunk async for chunk in request.stream() if chunk]
        seen = Seen.read(
            request.method,
            request.url.path,
            request.url.query,
            request.headers.items(),
            chunks,
            getattr(request.state, "idempotency_key", None),
        )
        out = await asyncio.to_thread(handler, seen)
        if isinstance(out.body, bytes):
            response = Response(out.body, out.status)
        else:
            response = StreamingResponse(iter(out.body), out.status)
        response.raw_headers = [
            *((k.encode(), v.encode()) for k, v in out.headers),
            *((k, v) for k, v in response.raw_headers if k != b"content-type"),
        ]
        return response

    return Starlette(
        routes=[Route("/{rest:path}", endpoint, methods=ALL_METHODS)],
        middleware=[Middleware(ASGIIdempotencyMiddleware, store=store, policy=policy)],
    )


class StarletteDoor(Door):
    """A Starlette app with the middleware, through ``httpx.ASGITransport``."""

    name = "starlette"

    def __init__(self, handler: Handler, store: Any, policy: Policy) -> None:
        super().__init__(handler, store, policy)
        self.app = starlette_app(handler, store, policy)
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async def _send(self, req: Sent) -> Reply:
        content: bytes | AsyncIterator[bytes] = req.body
        if req.chunked:

            async def stream() -> AsyncIterator[bytes]:
                for piece in _pieces(req.body):
                    yield piece

            content = stream()
        url = req.path + (f"?{req.query}" if req.query else "")
        raw = [(k, _raw(v)) for k, v in req.headers]
        response = await self.client.request(req.method, url, headers=raw, content=content)
        return Reply(
            response.status_code,
            _decoded(response.headers.raw),
            response.content,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


# WSGI --------------------------------------------------------------------------------------


def _read_wsgi_body(stream: Any, length: int | None) -> list[bytes]:
    chunks = []
    left = length
    while left is None or left > 0:
        chunk = stream.read(BODY_READ if left is None else min(BODY_READ, left))
        if not chunk:
            break
        chunks.append(chunk)
        if left is not None:
            left -= len(chunk)
    return chunks


def _wsgi_length(environ: dict[str, Any]) -> int | None:
    """How much to read (PEP 3333): CONTENT_LENGTH, or to EOF on a terminated stream."""
    length = environ.get("CONTENT_LENGTH")
    if length:
        return int(length)
    return None if environ.get("wsgi.input_terminated") else 0


def wsgi_app(handler: Handler) -> Callable[..., Iterable[bytes]]:
    """A raw WSGI app that reads ``wsgi.input`` a few bytes at a time."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        chunks = _read_wsgi_body(environ["wsgi.input"], _wsgi_length(environ))
        headers = tuple(
            (name[5:].replace("_", "-").lower(), value)
            for name, value in environ.items()
            if name.startswith("HTTP_")
        )
        seen = Seen.read(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ.get("QUERY_STRING", ""),
            headers,
            chunks,
            environ.get(ENVIRON_KEY),
        )
        out = handler(seen)
        start_response(f"{out.status} X", out.headers)
        return [out.body] if isinstance(out.body, bytes) else out.body

    return app


class RawWSGIDoor(Door):
    """A hand-built environ, as a WSGI server builds it (repeated header lines comma-joined,
    a chunked body de-chunked and marked ``wsgi.input_terminated``)."""

    name = "wsgi"

    def __init__(self, handler: Handler, store: Any, policy: Policy) -> None:
        super().__init__(handler, store, policy)
        self.app = WSGIIdempotencyMiddleware(wsgi_app(handler), store=store, policy=policy)

    async def _send(self, req: Sent) -> Reply:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": req.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": req.path,
            "QUERY_STRING": req.query,
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "testserver",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(req.body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if req.chunked:
            environ["wsgi.input_terminated"] = True
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        else:
            environ["CONTENT_LENGTH"] = str(len(req.body))
        for name, value in req.headers:
            var = "HTTP_" + name.upper().replace("-", "_")
            text = _text(value)
            environ[var] = f"{environ[var]}, {text}" if var in environ else text
        return await asyncio.to_thread(self._call, environ)

    def _call(self, environ: dict[str, Any]) -> Reply:
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            started.append((status, headers))
            return lambda data: None

        try:
            result = self.app(environ, start_response)
        except Exception as exc:
            return Reply(500, [], b"", exc)
        try:
            try:
                body = b"".join(result)
            except Exception as exc:
                if not started:
                    return Reply(500, [], b"", exc)
                raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        assert len(started) == 1, started
        status, out = started[0]
        return Reply(int(status[:3]), [(k.lower(), v) for k, v in out], body)


def flask_app(handler: Handler, store: Any, policy: Policy) -> flask.Flask:
    """A Flask app with the middleware around ``app.wsgi_app``; the view reads
    ``request.stream`` a few bytes at a time."""
    app = flask.Flask("retrysafe_conformance")

    @app.route("/", defaults={"rest": ""}, methods=ALL_METHODS)
    @app.route("/<path:rest>", methods=ALL_METHODS)
    def view(rest: str) -> flask.Response:
        request = flask.request
        chunks = _read_wsgi_body(request.stream, _wsgi_length(request.environ))
        seen = Seen.read(
            request.method,
            request.path,
            request.query_string.decode("latin-1"),
            ((k.lower(), v) for k, v in request.headers.items()),
            chunks,
            request.environ.get(ENVIRON_KEY),
        )
        out = handler(seen)
        body = out.body if isinstance(out.body, bytes) else iter(out.body)
        response = flask.Response(body, out.status)
        response.headers.clear()
        for name, value in out.headers:
            response.headers.add(name, value)
        return response

    app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=store, policy=policy
    )
    return app


class FlaskDoor(Door):
    """A Flask app with the middleware, through werkzeug's test client."""

    name = "flask"

    def __init__(self, handler: Handler, store: Any, policy: Policy) -> None:
        super().__init__(handler, store, policy)
        self.app = flask_app(handler, store, policy)

    async def _send(self, req: Sent) -> Reply:
        return await asyncio.to_thread(self._call, req)

    def _call(self, req: Sent) -> Reply:
        overrides: dict[str, Any] = {}
        if req.chunked:  # what a server does with a chunked body: no length, a terminated stream
            overrides = {"CONTENT_LENGTH": "", "wsgi.input_terminated": True}
        client = self.app.test_client()
        response = client.open(
            req.path,
            method=req.method,
            query_string=req.query,
            headers=[(k, _text(v)) for k, v in req.headers],
            input_stream=io.BytesIO(req.body),
            environ_overrides=overrides,
        )
        try:
            data = response.get_data()
        finally:
            response.close()
        return Reply(
            response.status_code,
            [(k.lower(), v) for k, v in response.headers.to_wsgi_list()],
            data,
        )


DOORS: dict[str, type[Door]] = {
    door.name: door for door in (RawASGIDoor, StarletteDoor, RawWSGIDoor, FlaskDoor)
}


# -- the store side -----------------------------------------------------------------------


class SpyStore:
    """A real store behind a thin wrapper that counts calls and can be switched down.

    ``watch`` is counted when it starts (a duplicate is now waiting); every other operation
    once it has returned, so a test that waited for a ``complete`` sees its effect.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = False
        self.calls: Counter[str] = Counter()
        self.ids: list[str] = []
        self._cond = threading.Condition()

    def _enter(self, op: str, id: str) -> None:
        if self.down:
            raise StoreUnavailable(f"test store switched down ({op})")

    def _record(self, op: str, id: str) -> None:
        with self._cond:
            self.calls[op] += 1
            self.ids.append(id)
            self._cond.notify_all()

    def count(self, op: str) -> int:
        with self._cond:
            return self.calls[op]

    def wait_for(self, op: str, at_least: int, timeout: float = 5.0) -> bool:
        """Block until ``op`` was called ``at_least`` times in all."""
        with self._cond:
            return self._cond.wait_for(lambda: self.calls[op] >= at_least, timeout)

    async def until(self, op: str, at_least: int, timeout: float = 5.0) -> None:
        ok = await asyncio.to_thread(self.wait_for, op, at_least, timeout)
        assert ok, f"store saw {self.count(op)} {op} calls, expected {at_least}"

    # sync face
    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        self._enter("claim", id)
        try:
            return self.inner.claim(id, fingerprint, lease)  # type: ignore[no-any-return]
        finally:
            self._record("claim", id)

    def renew(self, id: str, token: int, lease: float) -> bool:
        self._enter("renew", id)
        try:
            return self.inner.renew(id, token, lease)  # type: ignore[no-any-return]
        finally:
            self._record("renew", id)

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        self._enter("complete", id)
        try:
            return self.inner.complete(id, token, response, ttl, retention)  # type: ignore[no-any-return]
        finally:
            self._record("complete", id)

    def release(self, id: str, token: int) -> bool:
        self._enter("release", id)
        try:
            return self.inner.release(id, token)  # type: ignore[no-any-return]
        finally:
            self._record("release", id)

    def get(self, id: str) -> Record | None:
        return self.inner.get(id)  # type: ignore[no-any-return]

    def watch(self, id: str, timeout: float) -> None:
        self._enter("watch", id)
        self._record("watch", id)  # counted on entry: the test learns a duplicate is waiting
        self.inner.watch(id, timeout)

    def delete(self, id: str) -> bool:
        return self.inner.delete(id)  # type: ignore[no-any-return]

    def close(self) -> None:
        """The kit closes the real store."""

    # async face
    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        self._enter("claim", id)
        try:
            return await self.inner.aclaim(id, fingerprint, lease)  # type: ignore[no-any-return]
        finally:
            self._record("claim", id)

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        self._enter("renew", id)
        try:
            return await self.inner.arenew(id, token, lease)  # type: ignore[no-any-return]
        finally:
            self._record("renew", id)

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        self._enter("complete", id)
        try:
            return await self.inner.acomplete(id, token, response, ttl, retention)  # type: ignore[no-any-return]
        finally:
            self._record("complete", id)

    async def arelease(self, id: str, token: int) -> bool:
        self._enter("release", id)
        try:
            return await self.inner.arelease(id, token)  # type: ignore[no-any-return]
        finally:
            self._record("release", id)

    async def aget(self, id: str) -> Record | None:
        return await self.inner.aget(id)  # type: ignore[no-any-return]

    async def awatch(self, id: str, timeout: float) -> None:
        self._enter("watch", id)
        self._record("watch", id)
        await self.inner.awatch(id, timeout)

    async def adelete(self, id: str) -> bool:
        return await self.inner.adelete(id)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """The kit closes the real store."""
