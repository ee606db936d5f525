"""What a test suite of code that uses retrysafe needs: the client's testing mode, a counting store.

- :class:`set_testing` (SPEC 27, after stamina's ``set_testing``): the client's retries with
  no sleeps and few attempts. ``set_testing(True)`` turns it on for the process; used as a
  context manager it restores the previous setting on exit::

      with set_testing(True, attempts=2):
          ...  # retries happen at once, at most 2 attempts per call

- :class:`RecordingStore`: a store wrapper that counts every call and tallies what each claim
  answered. The demo uses it to tell an ``expired`` re-execution from a first one (the claim
  says so), and the benchmark to count store round trips per request (SPEC 36: a replay costs
  one, a first execution two). It adds no behaviour: every call goes to the wrapped store.

Both are light: importing this module needs no extra (the client reads the testing mode here).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from retrysafe._records import Claimed, ClaimResult, Existing, Record, State, StoredResponse
from retrysafe.errors import ConfigurationError
from retrysafe.stores import DualStore

# -- testing mode (SPEC 27) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Testing:
    attempts: int


_mode_lock = threading.Lock()
_state: Testing | None = None


def testing_mode() -> Testing | None:
    """The testing setting in force, or None in normal operation."""
    return _state


class set_testing:  # lowercase: used like a function, and as a context manager
    """Turn the client's testing mode on (``attempts`` caps attempts per call) or off."""

    def __init__(self, on: bool, *, attempts: int = 1) -> None:
        global _state
        if attempts < 1:
            raise ConfigurationError("testing mode needs at least 1 attempt")
        with _mode_lock:
            self._previous = _state
            _state = Testing(attempts) if on else None

    def __enter__(self) -> set_testing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _state
        with _mode_lock:
            _state = self._previous


# -- a store that counts its calls ---------------------------------------------------------


def claim_kind(result: ClaimResult) -> str:
    """A short name for what a claim answered: the outcome it leads to, or the state it saw."""
    match result:
        case Claimed(recovered=True):
            return "recovered"
        case Claimed(expired_before=True):
            return "expired"
        case Claimed():
            return "executed"
        case Existing(record=record) if record.state is State.IN_FLIGHT:
            return "in_flight"
        case Existing(record=record):
            return str(record.state)
    raise AssertionError(f"unknown claim result {result!r}")  # pragma: no cover


@dataclass
class Tally:
    """Counts since the last :meth:`RecordingStore.reset`."""

    calls: Counter[str] = field(default_factory=Counter)  # method name -> calls
    claims: Counter[str] = field(default_factory=Counter)  # claim_kind -> claims

    @property
    def round_trips(self) -> int:
        return sum(self.calls.values())


class RecordingStore:
    """Wraps a :class:`~retrysafe.stores.DualStore`; the wrapper is one too."""

    def __init__(self, inner: DualStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.tally = Tally()
        self._lock = threading.Lock()  # sync calls may come from many threads

    def reset(self) -> Tally:
        """Start counting afresh; returns the counts so far."""
        with self._lock:
            done, self.tally = self.tally, Tally()
        return done

    def _count(self, method: str) -> None:
        with self._lock:
            self.tally.calls[method] += 1

    def _claimed(self, result: ClaimResult) -> ClaimResult:
        with self._lock:
            self.tally.calls["claim"] += 1
            self.tally.claims[claim_kind(result)] += 1
        return result

    # -- sync ----------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        return self._claimed(self.inner.claim(id, fingerprint, lease))

    def renew(self, id: str, token: int, lease: float) -> bool:
        self._count("renew")
        return self.inner.renew(id, token, lease)

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        self._count("complete")
        return self.inner.complete(id, token, response, ttl, retention)

    def release(self, id: str, token: int) -> bool:
        self._count("release")
        return self.inner.release(id, token)

    def get(self, id: str) -> Record | None:
        self._count("get")
        return self.inner.get(id)

    def watch(self, id: str, timeout: float) -> None:
        self._count("watch")
        self.inner.watch(id, timeout)

    def delete(self, id: str) -> bool:
        self._count("delete")
        return self.inner.delete(id)

    def close(self) -> None:
        self.inner.close()

    # -- async ---------------------------------------------------------------------------

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        return self._claimed(await self.inner.aclaim(id, fingerprint, lease))

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        self._count("renew")
        return await self.inner.arenew(id, token, lease)

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        self._count("complete")
        return await self.inner.acomplete(id, token, response, ttl, retention)

    async def arelease(self, id: str, token: int) -> bool:
        self._count("release")
        return await self.inner.arelease(id, token)

    async def aget(self, id: str) -> Record | None:
        self._count("get")
        return await self.inner.aget(id)

    async def awatch(self, id: str, timeout: float) -> None:
        self._count("watch")
        await self.inner.awatch(id, timeout)

    async def adelete(self, id: str) -> bool:
        self._count("delete")
        return await self.inner.adelete(id)

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = ["RecordingStore", "Tally", "claim_kind", "set_testing"]
