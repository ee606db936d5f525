"""A held claim's lease as its holder sees it: when it lapses, and whether it was lost (SPEC 13).

The store decides who holds a key (the fencing token); the lease only says when a duplicate
*may* take it over. So the holder cannot know for sure that it still holds the key, but it
knows when it stopped being sure: when a renewal was fenced out (a duplicate took the key over)
or when no renewal reached the store before the lease ran out (a duplicate may have). From
then on the holder's claim is **lost**: a duplicate may be running the same operation alongside
it, and the holder's completion will be fenced out if it did.

The heartbeat (``engine.Heartbeat``) keeps a :class:`Lease` up to date; the adapters make it
readable below the handler, so the handler can ask :func:`lease_lost` and stop, and atomic
units refuse to go on (``retrysafe.atomic`` raises ``ClaimTakenOver``). Losing a lease is
reported once: logged, and told to the ``on_lost`` hook (telemetry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token

log = logging.getLogger("retrysafe")

TAKEN_OVER = "taken_over"  # a renewal or the completion was fenced out: a duplicate holds it
EXPIRED = "expired"  # the store could not be reached to renew before the lease ran out

LostHook = Callable[[str], None]


class Lease:
    """The lease of one held claim: ``expires`` (``time.monotonic()`` seconds) and ``lost``."""

    __slots__ = ("_on_lost", "expires", "id", "lost", "reason")

    def __init__(
        self, id: str, claimed_at: float, lease_s: float, on_lost: LostHook | None = None
    ) -> None:
        self.id = id
        # Counted from before the claim was sent: the store's lease began no earlier.
        self.expires = claimed_at + lease_s
        self.lost = False
        self.reason: str | None = None
        self._on_lost = on_lost

    def renewed(self, sent_at: float, lease_s: float) -> None:
        """A renewal sent at ``sent_at`` succeeded (or an open transaction held the record)."""
        if not self.lost:
            self.expires = max(self.expires, sent_at + lease_s)

    def lose(self, reason: str) -> None:
        """The claim is lost (``TAKEN_OVER`` or ``EXPIRED``); reported once."""
        if self.lost:
            return
        self.lost, self.reason = True, reason
        log.warning(
            "idempotency claim %s lost while its handler ran (%s): a duplicate may run the "
            "operation alongside it; its result is stored only if no duplicate took the key",
            self.id[:12],
            reason.replace("_", " "),
        )
        if self._on_lost is not None:
            self._on_lost(reason)


_current_lease: ContextVar[Lease | None] = ContextVar("retrysafe_lease", default=None)


def bind(lease: Lease | None) -> Token[Lease | None]:
    """Make ``lease`` the one :func:`lease_lost` reads (the adapters, while the handler runs);
    undo with :func:`unbind`. Plain functions, not a context manager: this runs on every keyed
    request (and every WSGI body chunk), next to the key's own ContextVar."""
    return _current_lease.set(lease)


def unbind(token: Token[Lease | None]) -> None:
    _current_lease.reset(token)


class holding:  # lowercase: used like a function, ``with holding(lease):``
    """:func:`bind` for a ``with`` statement (the atomic paths, which are not hot)."""

    __slots__ = ("_lease", "_reset")
    _reset: Token[Lease | None]

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def __enter__(self) -> None:
        self._reset = bind(self._lease)

    def __exit__(self, *exc: object) -> None:
        unbind(self._reset)


def lease_lost() -> bool:
    """Whether the claim of the keyed request running here was lost (False outside one).

    True once a heartbeat found the key taken over by a duplicate, or could not reach the
    store before the lease ran out: a duplicate may now run the same operation, so a long
    handler should stop before its next side effect (and let the client's retry get the
    duplicate's result). Atomic handlers need not ask: ``retrysafe.atomic`` raises
    ``ClaimTakenOver`` at the next ``transaction()`` or ``phase()``.
    """
    lease = _current_lease.get()
    return lease is not None and lease.lost


def current_lease() -> Lease | None:
    """The lease of the keyed request running here, or None outside one."""
    return _current_lease.get()
