"""WSGI idempotency middleware for Flask, Django and any WSGI app; uses the sync store path.

WSGI joins repeated header lines with commas before we see them, so two ``Idempotency-Key``
lines arrive as one comma-joined value, which the key parser rejects as a list (SPEC 3).
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus

from retrysafe import lease as leases
from retrysafe.context import key_scope
from retrysafe.decide import (
    Complete,
    Execute,
    Keyed,
    Pass,
    Refuse,
    Release,
    Replay,
    replay_headers,
)
from retrysafe.engine import (
    Ending,
    Heartbeat,
    atomic_policy,
    bound_unit,
    claim_decision,
    finish,
    open_unit,
    require_atomic,
    settle_record,
)
from retrysafe.errors import ClaimTakenOver, StoreError, StoreUnavailable
from retrysafe.fingerprint import HeaderView, RequestFacts, quoted_path, target_path
from retrysafe.http._exchange import (
    Capture,
    Identity,
    InvalidLength,
    KeyHeaders,
    ReadBody,
    cut_short,
    declared_length,
    identify,
    look,
    malformed_body,
    read_limit,
    refusal,
    taken_over,
    too_large,
    unstored,
)
from retrysafe.http.types import Environ, ExcInfo, StartResponse, WSGIApp
from retrysafe.keyring import Keyring
from retrysafe.lease import Lease, holding
from retrysafe.outcomes import Outcome
from retrysafe.policy import Policy
from retrysafe.problems import ProblemResponse, store_unavailable
from retrysafe.stores.base import AtomicUnit, Store
from retrysafe.telemetry.observe import DEFAULT_TELEMETRY, NULL_OBSERVATION, Telemetry, observe

log = logging.getLogger("retrysafe")
_NEEDS_BODY = (ReadBody, Keyed)  # built once: ``ReadBody | Keyed`` makes a union per use
ENVIRON_KEY = "retrysafe.idempotency_key"
_READ_CHUNK = 64 * 1024


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


class WSGIIdempotencyMiddleware:
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
        self.app = app
        self.store = store
        self.policy = policy or Policy()
        self.telemetry = telemetry  # spans, metrics, audit log (SPEC 31-34); None: off
        # SPEC 13a: handlers write in the store's transaction (retrysafe.atomic) and the record
        # commits with them; responses are then held until that commit.
        self.atomic = atomic
        if atomic:
            require_atomic(store)
            self.policy = atomic_policy(self.policy)  # no key, no transaction: a 400, not a 500
        self.key_headers = KeyHeaders(self.policy)
        self.keyring = Keyring(self.policy.secret)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if not self.policy.covers(method):
            return self.app(environ, start_response)
        return _Responder(self, environ, start_response).run()


class _Responder:
    def __init__(
        self, mw: WSGIIdempotencyMiddleware, environ: Environ, start_response: StartResponse
    ):
        self.app, self.store, self.policy, self.atomic = mw.app, mw.store, mw.policy, mw.atomic
        self.key_headers, self.keyring = mw.key_headers, mw.keyring
        self.environ, self.start_response = environ, start_response
        self.headers = EnvironHeaders(environ)
        self.body: bytes | None = None
        self.telemetry, self.obs = mw.telemetry, NULL_OBSERVATION

    def run(self) -> Iterable[bytes]:
        method = self.environ["REQUEST_METHOD"]
        path = self.environ.get("PATH_INFO", "") or "/"
        admission = look(self.policy, method, path, self.headers, keys=self.key_headers)
        if not isinstance(admission, Pass):
            self.obs = observe(self.telemetry, method, path, self.headers)
        if isinstance(admission, _NEEDS_BODY):
            problem = self._read_body(read_limit(admission, self.policy))
            if problem is not None:
                return self._problem(problem)
        if isinstance(admission, ReadBody):
            admission = look(
                self.policy, method, path, self.headers, self.body, keys=self.key_headers
            )
        # isinstance, the hot case first: a class pattern (``case Keyed(key)``) costs several
        # times an isinstance and an attribute read (MATCH_CLASS looks up ``__match_args__``).
        if isinstance(admission, Keyed):
            return self._keyed(admission.key, method, path)
        if isinstance(admission, Pass):
            return self.app(self.environ, self.start_response)
        if isinstance(admission, Refuse):
            return self._problem(refusal(admission, self.policy), admission.outcome)
        raise AssertionError("look() never asks for the body twice")  # pragma: no cover

    def _keyed(self, key: str, method: str, path: str) -> Iterable[bytes]:
        facts = RequestFacts(
            method,
            _sent_path(self.environ),
            self.environ.get("QUERY_STRING", ""),
            self.headers,
            self.body or b"",
            # An authentication middleware wrapping this one (or the server) sets it (PEP 3333).
            self.environ.get("REMOTE_USER") or None,
        )
        claimed_at = time.monotonic()  # the lease began no earlier
        try:
            obs = self.obs  # no store timer when telemetry is off: nothing would read it
            timer = None if obs is NULL_OBSERVATION else obs.store_time
            principals = self.keyring.current or self.keyring.load(self.store)
            ident = identify(key, facts, self.policy, principals)
            if isinstance(ident, Refuse):
                return self._problem(refusal(ident, self.policy), ident.outcome)
            obs.keyed(key, ident.scope, ident.fingerprint)
            decision = claim_decision(self.store, ident.id, ident.fingerprint, self.policy, timer)
        except StoreError as exc:
            if self.policy.fail_open:
                log.warning("idempotency store unavailable, failing open: %s", exc)
                return self._fail_open(key)
            log.error("idempotency store unavailable, failing closed: %s", exc)
            return self._problem(store_unavailable(self.policy, exc), Outcome.STORE_ERROR)
        if isinstance(decision, Execute):  # not a class pattern: see run()
            self.obs.decided(decision.outcome, decision.previous)
            lease = Lease(ident.id, claimed_at, self.policy.lease_s, self.obs.lease_lost)
            if self.atomic:
                return self._execute_atomic(ident, decision.token, lease)
            return self._execute(ident, decision.token, lease)
        if isinstance(decision, Replay):
            response = decision.response
            self.obs.replayed(response)
            self.obs.finish(decision.outcome, response.status)
            self.start_response(_status_line(response.status), replay_headers(response))
            return [response.body]
        if isinstance(decision, Refuse):
            return self._problem(refusal(decision, self.policy), decision.outcome)
        raise AssertionError(f"unexpected decision {decision!r}")  # pragma: no cover

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
            self.obs.finish(Outcome.STORE_ERROR, status)

    def _execute(self, ident: Identity, token: int, lease: Lease) -> Iterable[bytes]:
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

        heartbeat = Heartbeat(self.store, ident.id, token, self.policy, lease=lease).begin()
        try:
            result = self._call_app(ident.key, start_response, lease)
        except BaseException:
            heartbeat.end()
            self._settle(ident, token, None, lease)
            self.obs.executed(capture.status or 500)
            raise
        return _Body(self, result, capture, ident, token, heartbeat)

    def _execute_atomic(self, ident: Identity, token: int, lease: Lease) -> Iterable[bytes]:
        """SPEC 13a: run the handler (its body included) with its unit bound, commit, and only
        then start the response: a client must never see a result a crash could still undo."""
        try:
            unit = open_unit(self.store, ident.id, token, ident.fingerprint, self.policy)
        except StoreError as exc:
            log.error("idempotency store unavailable, failing closed: %s", exc)
            self._settle(ident, token, None, lease)
            return self._problem(store_unavailable(self.policy, exc), Outcome.STORE_ERROR)
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
            self.store, ident.id, token, self.policy, idle=lambda: unit.holding, lease=lease
        )
        self.environ[ENVIRON_KEY] = ident.key
        result: Iterable[bytes] = ()
        try:
            with (
                key_scope(ident.key),
                heartbeat,
                bound_unit(unit),
                holding(lease),
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
            return self._commit_then_answer(ident, unit, capture, started, chunks)
        except ClaimTakenOver:
            unit.close()
            return self._problem(taken_over(self.policy), Outcome.CONFLICT_IN_FLIGHT)
        except BaseException:
            finish(unit, self.store, Release(), self.policy)  # SPEC 12, writes undone
            self.obs.executed(capture.status or 500)
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _commit_then_answer(
        self,
        ident: Identity,
        unit: AtomicUnit,
        capture: Capture,
        started: list[tuple[str, list[tuple[str, str]]]],
        chunks: list[bytes],
    ) -> Iterable[bytes]:
        obs = self.obs
        settlement = capture.settlement(self.policy, obs.trace_ids, obs.stored_headers())
        begun = time.perf_counter()
        try:
            ending = finish(unit, self.store, settlement, self.policy)
        except StoreError as exc:
            log.error("could not commit idempotency record %s: %s", ident.id[:12], exc)
            return self._problem(store_unavailable(self.policy, exc), Outcome.STORE_ERROR)
        obs.settled(settlement, time.perf_counter() - begun)
        if ending is Ending.TAKEN_OVER:
            log.warning("idempotency record %s was taken over; writes rolled back", ident.id[:12])
            return self._problem(taken_over(self.policy), Outcome.CONFLICT_IN_FLIGHT)
        if not started:  # nothing to store either: the claim was released
            obs.executed(500)
            raise RuntimeError("the WSGI application returned without calling start_response")
        status, headers = started[0]
        obs.executed(capture.status)
        self.start_response(status, headers)
        return chunks

    def _settle(self, ident: Identity, token: int, capture: Capture | None, lease: Lease) -> bool:
        """Settle the record (retried within the lease); False if a result to keep could not
        be stored, so the answer must not go out as final."""
        obs = self.obs
        settlement = (
            capture.settlement(self.policy, obs.trace_ids, obs.stored_headers())
            if capture is not None
            else Release()
        )
        started = time.perf_counter()
        try:
            name = settle_record(self.store, ident.id, token, settlement, self.policy, lease)
        except StoreError as exc:
            log.error("could not settle idempotency record %s: %s", ident.id[:12], exc)
            # An unreleased failure stays a failure: only a result to keep is withheld.
            return not isinstance(settlement, Complete)
        if obs is not NULL_OBSERVATION:
            obs.store_time(name, time.perf_counter() - started)
        return True

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

    def _read_body(self, limit: int) -> ProblemResponse | None:
        """Buffer the body (SPEC 16) and put it back as ``wsgi.input``; a problem if it is too
        big, cut short (the client went away mid-upload) or framed by an invalid length.

        A short body is never handed on: the handler would run on part of a request, its
        answer would be stored, and the client's complete retry would be refused as a
        different request.
        """
        try:
            declared = declared_length(self.headers)
        except InvalidLength as exc:
            return malformed_body(self.policy, str(exc))
        stream = self.environ.get("wsgi.input")
        if declared is not None and declared > limit:
            return too_large(self.policy, limit)
        chunks: list[bytes] = []
        size = 0
        if stream is not None and (declared or self.environ.get("wsgi.input_terminated")):
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
        self.body = b"".join(chunks)
        self.environ["wsgi.input"] = io.BytesIO(self.body)
        self.environ["CONTENT_LENGTH"] = str(len(self.body))
        return None

    def _problem(
        self, problem: ProblemResponse, outcome: Outcome = Outcome.REJECTED
    ) -> list[bytes]:
        self.obs.finish(outcome, problem.status)
        self.start_response(_status_line(problem.status), problem.headers)
        return [problem.body]


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
        ident: Identity,
        token: int,
        heartbeat: Heartbeat,
    ) -> None:
        self._responder, self._result, self._capture = responder, result, capture
        self._ident, self._token, self._heartbeat = ident, token, heartbeat
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
        held = leases.bind(self._heartbeat.lease)
        try:
            with key_scope(self._ident.key), self._responder.obs.active():
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
        responder = self._responder
        error = StoreUnavailable(
            f"the result of idempotency record {self._ident.id[:12]} could not be stored; "
            "its answer was withheld so the client does not take it for final"
        )
        if self._capture.size > len(last):  # bytes went out already: abort the connection
            raise error
        lease = self._heartbeat.lease
        problem = unstored(responder.policy, lease.expires - time.monotonic())
        # With exc_info the server replaces the unsent headers (or re-raises if it sent them).
        responder.start_response(
            _status_line(problem.status), problem.headers, (StoreUnavailable, error, None)
        )
        return problem.body

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
        stored = responder._settle(self._ident, self._token, outcome, self._heartbeat.lease)
        responder.obs.executed(503 if not stored else self._capture.status or 500)
        return stored


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"{status} Unknown"


_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
