"""Where a Django link's steps run: the thread that owns its connection (Django under ASGI).

Django's connections belong to one thread (``connections`` is thread-local, and
``transaction.atomic`` finds its connection through it). Under ASGI, Django runs a request's
sync views and its async ORM calls on one thread of its own (asgiref's ``sync_to_async`` with
``thread_sensitive=True``, one thread per request); :meth:`OwnThread.run` sends the unit's
blocking steps - re-check, completion, commit, rollback - to that same thread, so the view's
ORM writes and the record share Django's connection and its one transaction.

The ASGI middleware settles the record inside the application's send of its last body
message, while that thread is still there. Should a step arrive after the request's thread is
gone (the application ended without an answer: a client that left, an error outside the view),
the link is *orphaned*: it closes the connection from where it is (the database rolls the
transaction back; Django would close it too, at ``request_finished``) and Django's own
transaction state is left alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async

T = TypeVar("T")


class OwnThread:
    """Base of the Django links: the thread that opened the link, and running there."""

    def __init__(self, wrapper: Any) -> None:
        self._owner = threading.current_thread()  # an object: thread idents are reused
        self._wrapper_of_thread = wrapper
        self.orphaned = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the request's DB thread (asgiref's thread for it)."""
        return await sync_to_async(self._here, thread_sensitive=True)(fn, *args)

    def _here(self, fn: Callable[..., T], *args: Any) -> T:
        if threading.current_thread() is not self._owner and not self.orphaned:
            self._orphan()
        return fn(*args)

    def _orphan(self) -> None:
        """The request's thread is gone: close its connection (the database rolls back)."""
        self.orphaned = True
        wrapper = self._wrapper_of_thread
        wrapper.inc_thread_sharing()  # Django's one sanctioned way to touch it from here
        try:
            wrapper.close()
        finally:
            wrapper.dec_thread_sharing()


async def on_request_thread(make: Callable[..., T], *args: Any) -> T:
    """``make(*args)`` on the thread Django's async ORM uses for this request."""
    return await sync_to_async(make, thread_sensitive=True)(*args)
