"""WSGI idempotency middleware for Flask, Django and any WSGI app; uses the sync store path.

The request's trip is the shared flow (``_flow.py``); this module performs its steps with WSGI
I/O. WSGI joins repeated header lines with commas before we see them, so two
``Idempotency-Key`` lines arrive as one comma-joined value, which the key parser rejects as a
list (SPEC 3).
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TypeVar

from retrysafe import _lease as leases
from retrysafe._context import key_scope
from retrysafe._decide import Decision, Settlement
from retrysafe._engine import (
    Ending,
    Heartbeat,
    StoreTimer,
    bound_unit,
    claim_decision,
    finish,
    open_unit,
    settle_record,
)
from retrysafe._fingerprint import HeaderView, RequestFacts, quoted_path, target_path
from retrysafe._lease import Lease, holding
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy
from retrysafe._problems import ProblemResponse
from retrysafe._scopes import PrincipalKey
from retrysafe.errors import ClaimTakenOver, StoreUnavailable
from retrysafe.http._exchange import Capture, Identity, cut_short, taken_over, too_large
from retrysafe.http._flow import (
    RELEASE,
    Exchange,
    FailOpen,
    Forward,
    Respond,
    Run,
    Setup,
    admit_flow,
    commit_flow,
    drive,
    open_flow,
    settle_flow,
)
from retrysafe.http._types import Environ, ExcInfo, StartResponse, WSGIApp
from retrysafe.stores import AtomicUnit, Store
from retrysafe.telemetry import DEFAULT_TELEMETRY, Telemetry

log = logging.getLogger("retrysafe")
ENVIRON_KEY = "retrysafe.idempotency_key"
_READ_CHUNK = 64 * 1024
T = TypeVar("T")


class EnvironHeaders(HeaderView):
    """A WSGI request's headers, read from its environ: one header is one dict lookup there
    (``HTTP_IDEMPOTENCY_KEY``); the full list (lowercase names) is built only if iterated."""

    __slots__ = ("_all_lines", "environ")

    def __init__(self, environ: Environ) -> None:
        self.environ = environ
        self._all_lines: list[tuple[str, str]] | None = None

    def first(self, name: str) -> str | None:
        for key in _environ_keys(name):
            value: str | None = self.environ.get(key)
            # CGI leaves an empty CONTENT_TYPE/CONTENT_LENGTH for "not sent".
            if value is not None and (value or key.startswith("HTTP_")):
                return value
        return None

    def lines(self, name: str) -> list[str]:
        value = self.first(name)  # the server joined repeated lines into one (PEP 3333)
        return [] if value is None else [value]

    def _all(self) -> list[tuple[str, str]]:
        lines = self._all_lines
        if lines is None:
            lines = self._all_lines = []
            for key, value in self.environ.items():
                if key.startswith("HTTP_"):
                    lines.append((key[5:].replace("_", "-").lower(), value))
                elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                    lines.append((key.replace("_", "-").lower(), value))
        return lines


@functools.lru_cache(maxsize=64)
def _environ_keys(name: str) -> tuple[str, ...]:
    """Where header ``name`` (lowercase) may be in an environ, in the order :meth:`first` looks.

    A name with ``_`` has no environ key of its own: listing the environ never yields one.
    """
    if "_" in name or name != name.lower():
        return ()
    key = name.upper().replace("-", "_")
    if name in ("content-type", "content-length"):
        return (key, f"HTTP_{key}")
    return (f"HTTP_{key}",)


class WSGIIdempotencyMiddleware(Setup):
    """Gives a WSGI app ``Idempotency-Key`` semantics (SPEC section 2).

    ``app.wsgi_app = WSGIIdempotencyMiddleware(app.wsgi_app, store=open_store(url))``
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        store: Store,
        policy: Policy | None = None,
        telemetry: Telemetry | None = DEFAULT_TELEMETRY,
        atomic: bool = False,
    ) -> None:
        super().__init__(store, policy, telemetry, atomic)
        self.app = app
        self.store = store

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if not self.policy.covers(method):
            return self.app(environ, start_response)
        return _Responder(self, environ, start_response).run()


class _Responder(Exchange):
    """One request's trip through the middleware: the flow's steps, performed with WSGI I/O."""

    __slots__ = ("app", "atomic", "environ", "start_response", "store")

    def __init__(
        self, mw: WSGIIdempotencyMiddleware, environ: Environ, start_response: StartResponse
    ):
        Exchange.__init__(self, mw, EnvironHeaders(environ))  # no super(): per request
        self.app, self.store, self.atomic = mw.app, mw.store, mw.atomic
        self.environ, self.start_response = environ, start_response

    def run(self) -> Iterable[bytes]:
        environ = self.environ
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "") or "/"
        verdict = drive(admit_flow(self, method, path))
        if isinstance(verdict, Run):
            return self._execute_atomic(verdict) if self.atomic else self._execute(verdict)
        if isinstance(verdict, Respond):
            return self._respond(verdict)
        if isinstance(verdict, Forward):
            return self.app(environ, self.start_response)
        if isinstance(verdict, FailOpen):
            return self._fail_open(verdict.key)
        raise AssertionError(f"unexpected verdict {verdict!r}")  # pragma: no cover

    def facts(self, body: bytes) -> RequestFacts:
        environ = self.environ
        return RequestFacts(
            environ["REQUEST_METHOD"],
            _sent_path(environ),
            environ.get("QUERY_STRING", ""),
            self.headers,
            body,
            # An authentication middleware wrapping this one (or the server) sets it (PEP 3333).
            environ.get("REMOTE_USER") or None,
        )

    # The flow's I/O, performed here and now: drive() hands each result back to the flow.

    def offload(self, call: Callable[[], T]) -> T:
        return call()  # no event loop to keep free: run it here

    def load_principals(self) -> PrincipalKey:
        return self.keyring.load(self.store)

    def claim(self, ident: Identity, timer: StoreTimer | None) -> Decision:
        return claim_decision(self.store, ident.id, ident.fingerprint, self.policy, timer)

    def settle_record(self, run: Run, settlement: Settlement) -> str:
        store, policy = self.store, self.policy
        return settle_record(store, run.ident.id, run.token, settlement, policy, run.lease)

    def open_unit(self, run: Run) -> AtomicUnit:
        ident = run.ident
        return open_unit(self.store, ident.id, run.token, ident.fingerprint, self.policy)

    def finish_unit(self, unit: AtomicUnit, settlement: Settlement) -> Ending:
        return finish(unit, self.store, settlement, self.policy)

    def _fail_open(self, key: str) -> Iterable[bytes]:
        status = 500

        def start_response(
            line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal status
            status = int(line[:3])
            return self.start_response(line, headers, exc_info)

        try:
            return self._call_app(key, start_response)
        finally:  # the body may stream later: the decision (serve unprotected) is made now
            self.failed_open(status)

    def _execute(self, run: Run) -> Iterable[bytes]:
        capture = Capture(self.policy.max_cached_body)

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            capture.start(int(status[:3]), headers)
            write = self.start_response(status, headers, exc_info)

            def write_through(data: bytes) -> object:  # the legacy write() callable
                capture.chunk(data)
                return write(data)

            return write_through

        heartbeat = Heartbeat(
            self.store, run.ident.id, run.token, self.policy, lease=run.lease
        ).begin()
        try:
            result = self._call_app(run.ident.key, start_response, run.lease)
        except BaseException:
            heartbeat.end()
            self.settle(run, None)
            self.obs.executed(capture.status or 500)
            raise
        return _Body(self, result, capture, run, heartbeat)

    def settle(self, run: Run, capture: Capture | None) -> bool:
        """Settle the record as ``capture`` says (None: release); False if a result to keep
        could not be stored, so the answer must not go out as final."""
        stored: bool = drive(settle_flow(self, run, capture))
        return stored

    def _execute_atomic(self, run: Run) -> Iterable[bytes]:
        """SPEC 13a: run the handler (its body included) with its unit bound, commit, and only
        then start the response: a client must never see a result a crash could still undo."""
        opened = drive(open_flow(self, run))
        if isinstance(opened, Respond):
            return self._respond(opened)
        unit: AtomicUnit = opened
        capture = Capture(self.policy.max_cached_body)
        started: list[tuple[str, list[tuple[str, str]]]] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            capture.start(int(status[:3]), headers)
            started[:] = [(status, list(headers))]

            def write(data: bytes) -> object:  # the legacy write() callable, held too
                capture.chunk(data)
                chunks.append(data)
                return None

            return write

        heartbeat = Heartbeat(
            self.store,
            run.ident.id,
            run.token,
            self.policy,
            idle=lambda: unit.holding,
            lease=run.lease,
        )
        self.environ[ENVIRON_KEY] = run.ident.key
        result: Iterable[bytes] = ()
        try:
            with (
                key_scope(run.ident.key),
                heartbeat,
                bound_unit(unit),
                holding(run.lease),
                self.obs.active(),
            ):
                result = self.app(self.environ, start_response)
                for chunk in result:  # a generator app runs its handler here
                    capture.chunk(chunk)
                    chunks.append(chunk)
            capture.end()
            # The app's close() comes after the commit: frameworks release their database
            # connection there (Django's request_finished), which would undo an open
            # transaction.
            return self._commit_then_answer(run, unit, capture, started, chunks)
        except ClaimTakenOver:
            unit.close()
            return self._respond(self.refuse(taken_over(self.policy), Outcome.CONFLICT_IN_FLIGHT))
        except BaseException:
            self.finish_unit(unit, RELEASE)  # SPEC 12, writes undone
            self.obs.executed(capture.status or 500)
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _commit_then_answer(
        self,
        run: Run,
        unit: AtomicUnit,
        capture: Capture,
        started: list[tuple[str, list[tuple[str, str]]]],
        chunks: list[bytes],
    ) -> Iterable[bytes]:
        problem = drive(commit_flow(self, run, unit, capture))
        if problem is not None:
            return self._respond(problem)
        if not started:  # nothing to store either: the claim was released
            self.obs.executed(500)
            raise RuntimeError("the WSGI application returned without calling start_response")
        status, headers = started[0]
        self.obs.executed(capture.status)
        self.start_response(status, headers)
        return chunks

    def _call_app(
        self, key: str, start_response: StartResponse, lease: Lease | None = None
    ) -> Iterable[bytes]:
        self.environ[ENVIRON_KEY] = key
        held = leases.bind(lease) if lease is not None else None  # retrysafe.lease_lost()
        try:
            # The obs span nests the handler's spans under ours; report_cost() works.
            with key_scope(key), self.obs.active():
                return self.app(self.environ, start_response)
        finally:
            if held is not None:
                leases.unbind(held)

    def read_body(self, limit: int, declared: int | None) -> bytes | ProblemResponse:
        """Buffer the body (SPEC 16) and put it back as ``wsgi.input``; a problem if it is too
        big or cut short (the client went away mid-upload).

        A short body is never handed on: the handler would run on part of a request, its
        answer would be stored, and the client's complete retry would be refused as a
        different request.
        """
        environ = self.environ
        stream = environ.get("wsgi.input")
        chunks: list[bytes] = []
        size = 0
        if stream is not None and (declared or environ.get("wsgi.input_terminated")):
            # To the declared length, or else to the end of a stream the server terminates
            # (a chunked request); read() may return less than asked before the end.
            want = declared if declared is not None else limit + 1
            try:
                while size < want and (chunk := stream.read(min(want - size, _READ_CHUNK))):
                    size += len(chunk)
                    chunks.append(chunk)
            except OSError as exc:  # the connection failed, or the chunked framing was broken
                log.info("request body unreadable after %d bytes: %s", size, exc)
                return cut_short(self.policy, size, declared)
            if size > limit:
                return too_large(self.policy, limit)
            if declared is not None and size < declared:
                return cut_short(self.policy, size, declared)
        # else no length and no terminated stream: WSGI says there is no body
        body = b"".join(chunks)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return body

    def _respond(self, answer: Respond, exc_info: ExcInfo | None = None) -> list[bytes]:
        self.start_response(_status_line(answer.status), answer.headers, exc_info)
        return [answer.body]


def _sent_path(environ: Environ) -> str:
    """The request's path as the client sent it, for the fingerprint (SPEC 6).

    ``PATH_INFO`` is decoded (``/a%2Fb`` and ``/a/b`` are one path there), so the raw target
    is preferred: ``REQUEST_URI`` (gunicorn, uWSGI, mod_wsgi, Werkzeug) or ``RAW_URI``.
    Without either the decoded path is quoted again: the application cannot tell those paths
    apart then either.
    """
    uri: str | None = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if uri:
        return target_path(uri)
    return quoted_path(environ.get("SCRIPT_NAME", "") + (environ.get("PATH_INFO", "") or "/"))


class _Body:
    """The response iterable handed to the server: forwards each chunk as the app yields it and
    settles the claim exactly once.

    It settles when the body is exhausted (stored), when the app fails mid-body (released), or
    when the server calls ``close()`` early because the client went away (PEP 3333). A server
    may call ``close()`` without ever iterating; a generator would then skip its ``finally`` and
    leave the claim in flight with its heartbeat renewing it forever, so this is a class.

    A response whose last chunk is known before it is sent - one that declares its
    ``Content-Length``, or a list or tuple of chunks - is stored before that chunk is handed
    to the server: a client that has the whole answer can always have it replayed, even if
    the process dies right after answering. (Otherwise the last chunk is known only once the
    app says so, after it was sent; holding every chunk back until the next would delay a
    stream.)

    If the result cannot be stored (the store stayed down through the retries), the answer
    is not presented as final: when no byte was sent yet, the response is replaced by a 503
    problem (``start_response`` with ``exc_info``, PEP 3333); otherwise the last chunk is
    withheld and the iteration fails, so the server aborts the connection.
    """

    def __init__(
        self,
        responder: _Responder,
        result: Iterable[bytes],
        capture: Capture,
        run: Run,
        heartbeat: Heartbeat,
    ) -> None:
        self._responder, self._result, self._capture = responder, result, capture
        self._run, self._heartbeat = run, heartbeat
        self._chunks: Iterator[bytes] | None = None
        self._length: int | None = -1  # the declared Content-Length; -1: not looked up yet
        # A list or tuple says which chunk is its last.
        self._left = len(result) if isinstance(result, list | tuple) else -1
        self._settled = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        # A generator app runs its handler lazily, here: keep the current key visible (SPEC 19).
        held = leases.bind(self._run.lease)
        try:
            with key_scope(self._run.ident.key), self._responder.obs.active():
                if self._chunks is None:
                    self._chunks = iter(self._result)
                chunk = next(self._chunks)
        except StopIteration:
            self._capture.end()
            if not self._finish(self._capture):
                return self._withheld(b"")
            raise
        except BaseException:
            self._finish(None)  # SPEC 12: the handler failed, a retry runs again
            raise
        finally:
            leases.unbind(held)
        capture = self._capture
        capture.chunk(chunk)
        self._left -= 1
        if not self._settled and (self._left == 0 or self._completes(capture)):
            capture.end()
            if not self._settle(capture):  # before the server sends the answer's last bytes
                return self._withheld(chunk)
        return chunk

    def _completes(self, capture: Capture) -> bool:
        length = self._length if self._length != -1 else self._declared_length()
        return length is not None and capture.size >= length

    def _declared_length(self) -> int | None:
        length: int | None = None
        for name, value in self._capture.headers:
            if name.lower() == "content-length":
                length = int(value) if value.strip().isdigit() else None
                break
        self._length = length
        return length

    def _withheld(self, last: bytes) -> bytes:
        """The result was not stored: answer 503 if nothing was sent yet, else fail."""
        self._closed = True
        responder, run = self._responder, self._run
        error = responder.unfinished(run)
        if self._capture.size > len(last):  # bytes went out already: abort the connection
            raise error
        # With exc_info the server replaces the unsent headers (or re-raises if it sent them).
        return responder._respond(responder.withhold(run), (StoreUnavailable, error, None))[0]

    def close(self) -> None:
        # Closed before the end: the client is gone. If the handler started answering it ran,
        # so keep the record (unreplayable) rather than let a retry run it again; if it never
        # answered, the capture has no status and the claim is released.
        self._finish(self._capture)

    def _finish(self, outcome: Capture | None) -> bool:
        if self._closed:
            return True
        self._closed = True
        close = getattr(self._result, "close", None)
        try:
            if close is not None:
                close()
        finally:
            stored = self._settle(outcome)
        return stored

    def _settle(self, outcome: Capture | None) -> bool:
        if self._settled:
            return True
        self._settled = True
        self._heartbeat.end()
        responder = self._responder
        stored = responder.settle(self._run, outcome)
        responder.obs.executed(503 if not stored else self._capture.status or 500)
        return stored


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"{status} Unknown"


_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
