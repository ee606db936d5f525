"""Testing mode (SPEC 27), after stamina's ``set_testing``: no sleeps, few attempts.

``set_testing(True)`` turns it on for the process; used as a context manager it restores the
previous setting on exit::

    with set_testing(True, attempts=2):
        ...  # retries happen at once, at most 2 attempts per call
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType

from retrysafe.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Testing:
    attempts: int


_lock = threading.Lock()
_state: Testing | None = None


def testing() -> Testing | None:
    """The testing setting in force, or None in normal operation."""
    return _state


class set_testing:  # lowercase: used like a function, and as a context manager
    """Turn testing mode on (``attempts`` caps attempts per call) or off."""

    def __init__(self, on: bool, *, attempts: int = 1) -> None:
        global _state
        if attempts < 1:
            raise ConfigurationError("testing mode needs at least 1 attempt")
        with _lock:
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
        with _lock:
            _state = self._previous
