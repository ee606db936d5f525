"""Request bodies over the wire: cut short, mis-framed, hostile JSON, huge JSON, keys of the
wrong type in a body field (SPEC 6, 16).

A body that is not whole never reaches the handler and claims nothing; a JSON fingerprint
never holds up the event loop; hostile JSON gets a clean answer, never a 500 from the
middleware. Each test drives a real server on loopback with the bytes a client sends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

import retrysafe._fingerprint
from kit.scopes import shared_id
from kit.servers import RawClient, RawResponse, raw_request, serve_asgi, serve_werkzeug, serve_wsgi
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

WAIT = 30.0  # bounds a hang only


class RecordingAsgi:
    """Answers ``POST`` with 201 and the body it read, ``GET /ping`` with 200 after calling
    ``on_ping``; keeps every body it ran on."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.on_ping = lambda: None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "GET":
            self.on_ping()
            status, answer = 200, b"pong"
        else:
            self.bodies.append(body)
            status, answer = 201, json.dumps({"run": len(self.bodies)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class RecordingWsgi:
    """The WSGI twin of :class:`RecordingAsgi` (POST only)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.bodies.append(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        start_response("201 Created", [("Content-Type", "application/json")])
        return [json.dumps({"run": len(self.bodies)}).encode()]


def head(key: str | None, length: int | None, *, chunked: bool = False, extra: str = "") -> bytes:
    lines = ["POST /charges HTTP/1.1", "Host: test", "Content-Type: application/json"]
    if key is not None:
        lines.append(f"Idempotency-Key: {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def post(base: str, key: str | None, body: bytes) -> RawResponse:
    response = raw_request(base, head(key, len(body)) + body)
    assert response is not None
    return response


def problem(response: RawResponse) -> dict[str, Any]:
    assert response.header("content-type") == "application/problem+json", response
    doc: dict[str, Any] = json.loads(response.body)
    doc["name"] = str(doc["type"]).rsplit(":", 1)[-1]
    return doc


def cut_off(base: str, data: bytes) -> RawResponse | None:
    """Send ``data``, then stop sending (half-close: the answer can still be read)."""
    with RawClient(base) as client:
        client.send(data)
        client.close_write()
        return client.response()


def stored(store: MemoryStore, key: str) -> bool:
    """Whether ``key`` (the shared scope) has a record: claimed, completed or released."""
    return store.get(shared_id(store, key)) is not None


BODY = b'{"amount": 100}'  # 15 bytes


# -- a body shorter than its Content-Length ----------------------------------------------------


@pytest.fixture(params=["wsgiref", "werkzeug"])
def wsgi_door(request: pytest.FixtureRequest) -> Iterator[tuple[str, RecordingWsgi, MemoryStore]]:
    app, store = RecordingWsgi(), MemoryStore()
    serve = serve_wsgi if request.param == "wsgiref" else serve_werkzeug
    with serve(
        WSGIIdempotencyMiddleware(
            app, store=store, telemetry=None, policy=Policy(scope=shared_scope)
        )
    ) as base:
        yield base, app, store


def test_wsgi_never_runs_or_stores_a_body_cut_short(
    wsgi_door: tuple[str, RecordingWsgi, MemoryStore],
) -> None:
    base, app, store = wsgi_door
    key = str(uuid.uuid4())
    answer = cut_off(base, head(key, len(BODY)) + BODY[:5])
    assert answer is not None
    assert answer.status == 400
    doc = problem(answer)
    assert doc["name"] == "malformed-body"
    assert "after 5 bytes of the 15 bytes" in doc["detail"]
    assert app.bodies == []  # the handler never saw '{"amo'
    assert not stored(store, key)  # nothing claimed: the retry is a first attempt
    retry = post(base, key, BODY)
    assert retry.status == 201
    assert app.bodies == [BODY]
    again = post(base, key, BODY)
    assert again.header("idempotent-replayed") == "true"
    assert app.bodies == [BODY]


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "+15", "15, 15", "\xb2"])
def test_wsgi_refuses_a_content_length_that_is_not_a_number(
    wsgi_door: tuple[str, RecordingWsgi, MemoryStore], length: str
) -> None:
    base, app, store = wsgi_door
    key = str(uuid.uuid4())
    answer = raw_request(base, head(key, None, extra=f"Content-Length: {length}\r\n") + BODY)
    assert answer is not None
    assert answer.status == 400, answer
    doc = problem(answer)
    assert doc["name"] == "malformed-body"
    assert "Content-Length" in doc["detail"]
    assert app.bodies == []
    assert not stored(store, key)


def test_wsgi_chunked_body_is_read_whole_and_fingerprints_like_a_sized_one() -> None:
    app, store = RecordingWsgi(), MemoryStore()
    with serve_werkzeug(
        WSGIIdempotencyMiddleware(
            app, store=store, telemetry=None, policy=Policy(scope=shared_scope)
        )
    ) as base:
        key = str(uuid.uuid4())
        first = raw_request(base, head(key, None, chunked=True) + chunked(BODY))
        assert first is not None
        assert first.status == 201
        assert app.bodies == [BODY]
        retry = post(base, key, BODY)  # the same body with a Content-Length: the same request
        assert retry.header("idempotent-replayed") == "true"
        assert app.bodies == [BODY]


def test_wsgi_chunked_body_cut_short_claims_nothing() -> None:
    app, store = RecordingWsgi(), MemoryStore()
    with serve_werkzeug(
        WSGIIdempotencyMiddleware(
            app, store=store, telemetry=None, policy=Policy(scope=shared_scope)
        )
    ) as base:
        key = str(uuid.uuid4())
        answer = cut_off(base, head(key, None, chunked=True) + b"f\r\n" + BODY[:5])
        assert answer is not None
        assert answer.status == 400
        assert problem(answer)["name"] == "malformed-body"
        assert app.bodies == []
        assert not stored(store, key)
        retry = raw_request(base, head(key, None, chunked=True) + chunked(BODY))
        assert retry is not None
        assert retry.status == 201
        assert app.bodies == [BODY]


def test_wsgi_chunked_body_over_the_limit_is_413() -> None:
    app, store = RecordingWsgi(), MemoryStore()
    policy = Policy(scope=shared_scope, max_body=10)
    with serve_werkzeug(
        WSGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=None)
    ) as base:
        key = str(uuid.uuid4())
        answer = raw_request(base, head(key, None, chunked=True) + chunked(BODY))
        assert answer is not None
        assert answer.status == 413
        assert app.bodies == []
        assert not stored(store, key)


class Watched:
    """An ASGI app's outer layer that says when the inner app got a partial body
    (``more_body``) and when it returned."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.partial, self.done = threading.Event(), threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def watched() -> Any:
            message = await receive()
            if message.get("more_body"):
                self.partial.set()
            return message

        try:
            await self.app(scope, watched, send)
        finally:
            self.done.set()


def test_asgi_body_cut_short_claims_nothing() -> None:
    # The ASGI adapter was right: uvicorn hands over the part of the body it has
    # (more_body=True), then http.disconnect once the client is gone; nothing is run or claimed.
    app, store = RecordingAsgi(), MemoryStore()
    door = Watched(
        ASGIIdempotencyMiddleware(
            app, store=store, telemetry=None, policy=Policy(scope=shared_scope)
        )
    )
    with serve_asgi(door) as base:
        key = str(uuid.uuid4())
        with RawClient(base) as client:
            client.send(head(key, len(BODY)) + BODY[:5])
            assert door.partial.wait(WAIT)  # the middleware holds '{"amo' and waits for more
            client.close_write()
            assert client.response() is None  # nobody to answer
        assert door.done.wait(WAIT)
        assert app.bodies == []
        assert not stored(store, key)
        assert post(base, key, BODY).status == 201
        assert app.bodies == [BODY]


# -- JSON body mode ------------------------------------------------------------------------------


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_json_canonicalization_of_a_big_body_does_not_hold_up_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The big request's canonicalization waits until the server answers a GET: run on the
    # event loop, it would hold the loop, the GET could not be answered, and the gate would
    # stay shut until its timeout.
    app, store = RecordingAsgi(), MemoryStore()
    entered, gate = threading.Event(), threading.Event()
    seen: list[tuple[bool, bool]] = []  # (ran with a running event loop, gate opened in time)
    real = retrysafe._fingerprint.canonical_json

    def gated(value: object) -> bytes:
        on_loop = _loop_running()
        entered.set()
        seen.append((on_loop, gate.wait(WAIT / 3)))
        return real(value)

    monkeypatch.setattr(retrysafe._fingerprint, "canonical_json", gated)
    app.on_ping = gate.set
    body = json.dumps({"items": ["x" * 64] * 1024}).encode()  # 68 KiB
    policy = Policy(scope=shared_scope, body_mode="json")
    with serve_asgi(
        ASGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=None)
    ) as base:
        results: list[RawResponse] = []
        poster = threading.Thread(target=lambda: results.append(post(base, "big-1", body)))
        poster.start()
        assert entered.wait(WAIT)
        ping = httpx.get(base + "/ping", timeout=WAIT)
        poster.join(WAIT)
    assert ping.status_code == 200
    assert seen == [(False, True)]
    assert [r.status for r in results] == [201]
    assert len(body) > retrysafe._fingerprint.INLINE_JSON_LIMIT  # why it went off the loop


@pytest.mark.parametrize(
    "hostile",
    [
        b"[" * 100_000,  # deeper than any stack, unterminated
        b"[" * 5_000 + b"]" * 5_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b'{"a": ' + b"9" * 5_000 + b"}",  # beyond Python's int-from-string limit
        b'{"a": 9007199254740993}',  # beyond 2**53
        b'{"a": "\\ud800"}',  # a lone surrogate
        b"\xff\xfe{}",  # not UTF-8
        b'{"a": 1, "a": 2}',
    ],
)
def test_hostile_json_is_answered_by_the_app_and_replayed(hostile: bytes) -> None:
    app, store = RecordingAsgi(), MemoryStore()
    policy = Policy(scope=shared_scope, body_mode="json", body_field="idempotency_key")
    with serve_asgi(
        ASGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=None)
    ) as base:
        key = str(uuid.uuid4())
        first = post(base, key, hostile)
        retry = post(base, key, hostile)
        keyless = post(base, None, hostile)  # the body is searched for a key field too
    assert first.status == 201, first
    assert retry.status == 201
    assert retry.header("idempotent-replayed") == "true"
    assert keyless.status == 201
    assert app.bodies == [hostile, hostile]


def test_json_with_a_repeated_member_does_not_replay_the_last_members_request() -> None:
    # json.loads keeps the last "amount", many parsers the first: the app may charge 1.
    app, store = RecordingAsgi(), MemoryStore()
    policy = Policy(scope=shared_scope, body_mode="json")
    with serve_asgi(
        ASGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=None)
    ) as base:
        key = str(uuid.uuid4())
        first = post(base, key, b'{"amount": 2}')
        second = post(base, key, b'{"amount": 1, "amount": 2}')
        respaced = post(base, key, b'{ "amount":2 }')  # json mode still ignores whitespace
    assert first.status == 201
    assert second.status == 422
    assert problem(second)["name"] == "key-mismatch"
    assert respaced.header("idempotent-replayed") == "true"
    assert app.bodies == [b'{"amount": 2}']


def test_json_mode_refuses_bodies_over_max_json_body_with_413() -> None:
    app, store = RecordingAsgi(), MemoryStore()
    policy = Policy(scope=shared_scope, body_mode="json", max_json_body=100)
    body = json.dumps({"pad": "x" * 200}).encode()
    with serve_asgi(
        ASGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=None)
    ) as base:
        declared = post(base, "j-1", body)
        streamed = raw_request(base, head("j-2", None, chunked=True) + chunked(body))
        keyless = post(base, None, body)  # not buffered, not fingerprinted: passes through
        small = post(base, "j-3", b'{"a": 1}')
    assert declared.status == 413
    assert "max_json_body" in problem(declared)["detail"]
    assert streamed is not None
    assert streamed.status == 413
    assert keyless.status == 201
    assert small.status == 201
    assert app.bodies == [body, b'{"a": 1}']


def test_json_mode_limit_applies_to_keyed_bodies_not_to_those_searched_for_a_key() -> None:
    # With body_field, every covered body is read (up to max_body) to look for a key; only a
    # body that has one is canonicalized, so only that one is held to max_json_body.
    app, store = RecordingAsgi(), MemoryStore()
    policy = Policy(
        scope=shared_scope, body_mode="json", max_json_body=100, body_field="idempotency_key"
    )
    pad = "x" * 200
    keyless = json.dumps({"pad": pad}).encode()
    keyed = json.dumps({"idempotency_key": "b-1", "pad": pad}).encode()
    with serve_asgi(
        ASGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=None)
    ) as base:
        passed = post(base, None, keyless)
        refused = post(base, None, keyed)
        small = post(base, None, b'{"idempotency_key": "b-2"}')
    assert passed.status == 201
    assert refused.status == 413
    assert "max_json_body" in problem(refused)["detail"]
    assert small.status == 201
    assert app.bodies == [keyless, b'{"idempotency_key": "b-2"}']


# -- a key in a body field -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        (b'{"idempotency_key": 12345, "amount": 1}', "a number"),
        (b'{"idempotency_key": ["k-1"], "amount": 1}', "an array"),
        (b'{"idempotency_key": null, "amount": 1}', "null"),
        (b'{"idempotency_key": {"k": 1}, "amount": 1}', "an object"),
        (b'{"idempotency_key": true, "amount": 1}', "true or false"),
        (b'{"idempotency_key": "k-1", "idempotency_key": "k-2"}', "2 members"),
    ],
)
@pytest.mark.parametrize("server", ["asgi", "wsgi"])
def test_a_body_field_key_of_the_wrong_type_is_a_malformed_key(
    body: bytes, shape: str, server: str
) -> None:
    policy = Policy(scope=shared_scope, body_field="idempotency_key")
    store = MemoryStore()
    if server == "asgi":
        asgi = RecordingAsgi()
        runs = asgi.bodies
        serving = serve_asgi(
            ASGIIdempotencyMiddleware(asgi, store=store, policy=policy, telemetry=None)
        )
    else:
        wsgi = RecordingWsgi()
        runs = wsgi.bodies
        serving = serve_wsgi(
            WSGIIdempotencyMiddleware(wsgi, store=store, policy=policy, telemetry=None)
        )
    with serving as base:
        answers = [post(base, None, body), post(base, None, body)]
        good = post(base, None, b'{"idempotency_key": "k-9", "amount": 1}')
        replay = post(base, None, b'{"idempotency_key": "k-9", "amount": 1}')
    for answer in answers:
        assert answer.status == 400
        doc = problem(answer)
        assert doc["name"] == "malformed-key"
        assert "idempotency_key" in doc["detail"]
        assert shape in doc["detail"]
    assert good.status == 201
    assert replay.header("idempotent-replayed") == "true"
    assert len(runs) == 1  # neither malformed request ran
