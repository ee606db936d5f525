"""The dead-letter queue: calls that could not finish now, kept to be replayed later (SPEC 25).

A call is parked when it exhausts its retries, is refused by an open circuit or the retry
budget, or the server asks for a wait above the cap. An entry holds what is needed to send the
*same* request again — method, URL, body, headers with credentials removed, the idempotency
key — plus the attempt history, the last error, when it may be retried (``not_before``) and
until when a replay is safe (``replay_by``: the server's retention window, default 24 h; after
it the server may have forgotten the key and would run the request a second time).

Replay re-sends the same key through a live client, which re-attaches its own credentials
(``client.headers``, ``client.auth``) — and must: an entry remembers the names of the
credential headers it lost, and a replay lacking one is refused before it is sent (it would
reach another scope on the server, where the key is new, and run again; see
``_credentials.py``) — and — when its transport is an idempotent transport —
its breaker, budget and retry rules: a 409 waits, a 422 is terminal. Replays are rate-limited.
Entries whose window has passed are flagged ``reconcile`` and never re-sent blindly.

Several replayers may share a queue (two ``retrysafe dlq replay`` runs, a cron job and a human):
each entry is *claimed* by one atomic operation of the store (an ``UPDATE ... WHERE state =
'parked'``, or one Lua script on Redis) before it is sent, so it is sent by one replayer only.
The claim (state ``replaying``) is a lease: its end is kept in ``not_before``, so an entry
whose replayer died becomes due again when the lease lapses, and the settlement of a replayer
whose lease lapsed is fenced out by its claim token.

Storage sits behind the small protocol of ``_backend.py``, chosen by the URL: a SQLite file
(``_sqlite.py``, the default), Redis (``_redis.py``) or PostgreSQL (``_postgres.py``).
This module keeps all the logic — redaction, claims, replay, pacing, reconciliation — so every
backend behaves the same; async methods run the backend on a worker thread. The replay decision
logic is one generator driven by :meth:`replay` and :meth:`areplay`
(CONTRIBUTING.md, "Logic once, driven twice").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from retrysafe.client._errors import CallFailed, CircuitOpen, CredentialsMissing, RetryDeferred
from retrysafe.client._retry import RETRY_STATUSES, Attempt, retry_after
from retrysafe.client.dlq._backend import DLQBackend, open_backend
from retrysafe.client.dlq._credentials import RequireCredentials
from retrysafe.client.dlq._entries import DeadLetter, EntryState, Settlement
from retrysafe.errors import ConfigurationError, KeyMismatch
from retrysafe.testing import testing_mode

# Credentials are never written to disk; replay takes them from the live client instead, and
# is refused when the live client lacks one (see _credentials.py). These three are removed
# whatever ``redact=`` says: the server may scope keys by any of them.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
REDACTED_HEADERS = CREDENTIAL_HEADERS | frozenset(
    {
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
    }
)
# Recomputed by httpx (or by the transport, for the attempt number) on replay.
_DROPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_PAGE = 500  # entries read per query when a replay lists the queue
REPLAY_EXTENSION = "retrysafe.dlq_entry"  # request extension: "this send replays entry X"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replay did to one entry."""

    id: str
    key: str
    state: EntryState
    status: int | None
    detail: str
    replayed: bool = False  # the server answered from its store: the original had run
    # Not sent: the live client lacks these credential headers (lower-case names); parked still.
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Pace:
    seconds: float


@dataclass(frozen=True, slots=True)
class _Claim:
    """Claim the entry for this replayer; the driver answers with a token, or None."""

    entry: DeadLetter
    force: bool


@dataclass(frozen=True, slots=True)
class _Resend:
    entry: DeadLetter


@dataclass(frozen=True, slots=True)
class _Settle:
    result: ReplayResult
    not_before: float
    claim: str


@dataclass(frozen=True, slots=True)
class _Release:
    """Hand the claimed entry back untouched (nothing was sent)."""

    entry: DeadLetter
    claim: str


_ReplayCommand = _Pace | _Claim | _Resend | _Settle | _Release
_ReplayReply = httpx.Response | Exception | str | None
_ReplayFlow = Generator[_ReplayCommand, _ReplayReply, list[ReplayResult]]


class DeadLetterQueue:
    """Parked calls: ``DeadLetterQueue("sqlite:///dlq.db")``, or a ``redis://`` or
    ``postgresql://`` URL (options as for the stores, see ``_redis.py``/``_postgres.py``).
    """

    def __init__(
        self,
        url: str | Path = "sqlite:///retrysafe-dlq.db",
        *,
        replay_window: timedelta | float = timedelta(hours=24),
        redact: Iterable[str] = REDACTED_HEADERS,
        rate: float = 5.0,
        claim_lease: timedelta | float = timedelta(minutes=5),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        window = replay_window
        self.replay_window = window.total_seconds() if isinstance(window, timedelta) else window
        lease = claim_lease
        self.claim_lease = lease.total_seconds() if isinstance(lease, timedelta) else lease
        if self.replay_window <= 0 or rate <= 0 or self.claim_lease <= 0:
            raise ConfigurationError("replay_window, rate and claim_lease must be positive")
        self.redact = CREDENTIAL_HEADERS | frozenset(h.lower() for h in redact)
        self.rate = rate  # replays per second, at most
        self.clock, self.sleep, self.asleep = clock, sleep, asleep
        self.url = url
        self.backend: DLQBackend = open_backend(url)

    # -- storage ------------------------------------------------------------------------------

    def close(self) -> None:
        self.backend.close()

    def park(
        self,
        request: httpx.Request,
        *,
        key: str,
        reason: str,
        attempts: tuple[Attempt, ...],
        last_error: str,
        not_before: float,
    ) -> str:
        """Store a call; returns the entry id. The request body must have been read."""
        now = self.clock()
        headers, redacted = self._scrub(request.headers)
        url = request.url.copy_with(username=None, password=None)
        entry = DeadLetter(
            id=str(uuid.uuid4()),
            state=EntryState.PARKED,
            reason=reason,
            created_at=now,
            updated_at=now,
            not_before=max(not_before, now),
            replay_by=now + self.replay_window,
            method=request.method,
            url=str(url),
            headers=tuple(headers),
            redacted=tuple(redacted),
            body=request.content,
            key=key,
            attempts=attempts,
            last_error=last_error,
        )
        self.backend.insert(entry)
        return entry.id

    async def apark(self, request: httpx.Request, **kw: Any) -> str:
        return await asyncio.to_thread(lambda: self.park(request, **kw))

    def _scrub(self, headers: httpx.Headers) -> tuple[list[tuple[str, str]], list[str]]:
        kept: list[tuple[str, str]] = []
        redacted: list[str] = []
        for raw_name, raw_value in headers.raw:  # original case and order: the same bytes
            name, value = raw_name.decode(headers.encoding), raw_value.decode(headers.encoding)
            lower = name.lower()
            if lower in self.redact:
                redacted.append(lower)
            elif lower not in _DROPPED_HEADERS:
                kept.append((name, value))
        return kept, sorted(set(redacted))

    def get(self, entry_id: str) -> DeadLetter | None:
        return self.backend.get(entry_id)

    def entries(
        self, state: EntryState | None = None, *, limit: int = 1000, offset: int = 0
    ) -> list[DeadLetter]:
        """Entries, oldest first; all states unless ``state`` is given; ``limit`` of them
        after the first ``offset``."""
        return self.backend.entries(state, limit, offset)

    def _all(self, state: EntryState) -> list[DeadLetter]:
        """Every entry in ``state``, read page by page (a replay must not stop at a page: the
        oldest entries may all be waiting for their not-before while later ones are due).

        Offsets move when another replayer takes entries meanwhile, so one may be missed by
        this listing; it is then that replayer's, or the next run's.
        """
        found: list[DeadLetter] = []
        while page := self.backend.entries(state, _PAGE, len(found)):
            found += page
            if len(page) < _PAGE:
                break
        return found

    def depth(self) -> int:
        """Entries waiting for a replay (parked, or being replayed right now)."""
        return self.backend.count((EntryState.PARKED, EntryState.REPLAYING))

    def purge(self, *states: EntryState) -> int:
        """Delete entries in ``states`` (default: done and failed ones); returns how many."""
        return self.backend.purge(states or (EntryState.DONE, EntryState.FAILED))

    def _claim(self, claim: _Claim) -> str | None:
        """Take ``claim.entry`` for this replayer, atomically; its token, or None if taken.

        One atomic store operation: it matches only while the entry is still due — parked and
        due (or forced, or past its window: it is then claimed to be flagged), or claimed by a
        replayer whose lease has lapsed — so of two replayers racing for it, exactly one wins.
        """
        now = self.clock()
        token = str(uuid.uuid4())
        taken = self.backend.claim(
            claim.entry.id, token, force=claim.force, now=now, lease_until=now + self.claim_lease
        )
        return token if taken else None

    def _release(self, entry: DeadLetter, token: str) -> None:
        """Hand a claimed entry back as it was (a replay interrupted before its answer)."""
        self.backend.release(entry.id, token, not_before=entry.not_before, now=self.clock())

    def _settle(self, settle: _Settle) -> None:
        """Record a replay's result, if this replayer still holds the claim (fencing)."""
        r = settle.result
        self.backend.settle(
            Settlement(
                id=r.id,
                token=settle.claim,
                state=r.state,
                now=self.clock(),
                not_before=settle.not_before,
                counted=r.state is not EntryState.RECONCILE,
                status=r.status,
                detail=r.detail,
            )
        )

    def _due(self, ids: Iterable[str] | None, force: bool) -> list[DeadLetter]:
        """Entries to replay: the given ids, or every one whose not-before has come.

        Parked ones (``force`` ignores their not-before), and claimed ones whose replayer's
        lease has lapsed. Only a candidate list: :meth:`_claim` decides, atomically.
        """
        if ids is not None:
            found = [self.get(i) for i in ids]
            entries = [e for e in found if e is not None]
        else:
            entries = self._all(EntryState.PARKED) + self._all(EntryState.REPLAYING)
            entries.sort(key=lambda e: e.created_at)
        now = self.clock()
        return [
            e
            for e in entries
            if (
                e.state is EntryState.PARKED and (force or e.not_before <= now or e.replay_by < now)
            )
            or (e.state is EntryState.REPLAYING and e.not_before <= now)
        ]

    # -- replay -------------------------------------------------------------------------------

    def replay(
        self, client: httpx.Client, ids: Iterable[str] | None = None, *, force: bool = False
    ) -> list[ReplayResult]:
        """Replay due entries (or ``ids``) through ``client``; ``force`` ignores not-before.

        Entries another replayer claimed first are left to it and are not in the results.
        """
        flow = self._replay_flow(self._due(ids, force), force)
        reply: _ReplayReply = None
        held: tuple[DeadLetter, str] | None = None  # a claim not yet settled
        try:
            while True:
                command = flow.send(reply)
                reply = None
                match command:
                    case _Pace(seconds):
                        self.sleep(seconds)
                    case _Claim(entry):
                        reply = self._claim(command)
                        held = (entry, reply) if reply is not None else None
                    case _Resend(entry):
                        try:
                            response = client.send(
                                self._request(client, entry), auth=_guard(client, entry)
                            )
                            response.read()
                            reply = response
                        except (httpx.HTTPError, KeyMismatch, CredentialsMissing) as exc:
                            reply = exc
                    case _Settle():
                        self._settle(command)
                        held = None
                    case _Release(entry, claim):
                        self._release(entry, claim)
                        held = None
        except StopIteration as done:
            return list(done.value)
        finally:
            if held is not None:  # interrupted mid-replay: let the next replayer have it
                self._release(*held)

    async def areplay(
        self, client: httpx.AsyncClient, ids: Iterable[str] | None = None, *, force: bool = False
    ) -> list[ReplayResult]:
        """:meth:`replay` for an ``httpx.AsyncClient``."""
        due = await asyncio.to_thread(self._due, ids, force)
        flow = self._replay_flow(due, force)
        reply: _ReplayReply = None
        held: tuple[DeadLetter, str] | None = None
        try:
            while True:
                command = flow.send(reply)
                reply = None
                match command:
                    case _Pace(seconds):
                        await self.asleep(seconds)
                    case _Claim(entry):
                        reply = await asyncio.to_thread(self._claim, command)
                        held = (entry, reply) if reply is not None else None
                    case _Resend(entry):
                        try:
                            response = await client.send(
                                self._request(client, entry), auth=_guard(client, entry)
                            )
                            await response.aread()
                            reply = response
                        except (httpx.HTTPError, KeyMismatch, CredentialsMissing) as exc:
                            reply = exc
                    case _Settle():
                        await asyncio.to_thread(self._settle, command)
                        held = None
                    case _Release(entry, claim):
                        await asyncio.to_thread(self._release, entry, claim)
                        held = None
        except StopIteration as done:
            return list(done.value)
        finally:
            if held is not None:  # cancelled mid-replay: one short write, not awaited
                self._release(*held)

    def _request(
        self, client: httpx.Client | httpx.AsyncClient, entry: DeadLetter
    ) -> httpx.Request:
        """The parked request, through ``client`` so its credentials and defaults re-attach."""
        request = client.build_request(
            entry.method,
            entry.url,
            headers=list(entry.headers),
            content=entry.body,
            extensions={REPLAY_EXTENSION: entry.id},
        )
        return request

    def _replay_flow(self, entries: list[DeadLetter], force: bool) -> _ReplayFlow:
        """Decide, entry by entry, whether to re-send, and what the answer means.

        Each entry is claimed first; one another replayer holds (or has settled since the list
        was read) is skipped.
        """
        mode = testing_mode()
        interval = 0.0 if mode is not None else 1.0 / self.rate
        results: list[ReplayResult] = []
        sent = 0
        for entry in entries:
            claim = yield _Claim(entry, force)
            if not isinstance(claim, str):
                continue
            if entry.replay_by < self.clock():
                result = ReplayResult(
                    entry.id,
                    entry.key,
                    EntryState.RECONCILE,
                    None,
                    "past its replay window: the server may have forgotten the key, so a "
                    "re-send could run twice; reconcile with the far side instead",
                )
                yield _Settle(result, entry.not_before, claim)
                results.append(result)
                continue
            if sent and interval:
                yield _Pace(interval)
            sent += 1
            reply = yield _Resend(entry)
            assert not isinstance(reply, str)
            if isinstance(reply, CredentialsMissing):  # nothing sent: the entry stays as it was
                yield _Release(entry, claim)
                refused = ReplayResult(
                    entry.id, entry.key, EntryState.PARKED, None, str(reply), missing=reply.missing
                )
                results.append(refused)
                continue
            result, not_before = self._judge(entry, reply)
            yield _Settle(result, not_before, claim)
            results.append(result)
        return results

    def _judge(
        self, entry: DeadLetter, reply: httpx.Response | Exception | None
    ) -> tuple[ReplayResult, float]:
        """What a replay's answer means for its entry (SPEC 25: 409 waits, 422 is terminal)."""
        now = self.clock()
        backoff = now + max(1.0, 2.0 ** min(entry.replays, 10))

        def result(state: EntryState, status: int | None, detail: str) -> ReplayResult:
            replayed = isinstance(reply, httpx.Response) and (
                reply.headers.get("idempotent-replayed", "").lower() == "true"
            )
            return ReplayResult(entry.id, entry.key, state, status, detail, replayed)

        if isinstance(reply, httpx.Response):
            status = reply.status_code
            if status < 400:
                return result(EntryState.DONE, status, f"HTTP {status}"), entry.not_before
            if status in RETRY_STATUSES or status == 409:
                wait = retry_after(reply.headers, now)
                later = now + wait if wait is not None else backoff
                return result(EntryState.PARKED, status, f"HTTP {status}"), later
            return result(EntryState.FAILED, status, f"HTTP {status}: terminal"), entry.not_before
        if isinstance(reply, KeyMismatch):
            detail = f"key mismatch: {reply}"
            return result(EntryState.FAILED, 422, detail), entry.not_before
        if isinstance(reply, CircuitOpen | RetryDeferred):
            return result(EntryState.PARKED, None, str(reply)), max(reply.not_before, now)
        if isinstance(reply, CallFailed) and reply.last_response is not None:
            status = reply.last_response.status_code
            return result(EntryState.PARKED, status, str(reply)), backoff
        return result(EntryState.PARKED, None, f"{type(reply).__name__}: {reply}"), backoff


def _guard(client: httpx.Client | httpx.AsyncClient, entry: DeadLetter) -> httpx.Auth:
    """The client's own auth, refusing to send without the credentials ``entry`` lost."""
    return RequireCredentials(client.auth, entry.redacted)
