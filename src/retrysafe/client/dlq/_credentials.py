"""A DLQ replay is never sent in a scope other than the original's (SPEC 25, SPEC 5).

The queue strips credential headers before storing an entry and records only their names
(``DeadLetter.redacted``). The server scopes keys by the caller's credentials, so a replay
sent without them (or with only some) would reach another scope, where the key is new, and
the operation would run a second time. :class:`RequireCredentials` is an ``httpx.Auth`` that
runs the live client's own auth (``client.auth``: it may add ``Authorization`` itself) and
then refuses, before a byte is sent, any request that lacks one of the recorded headers.
It refuses with :class:`~retrysafe.client._errors.CredentialsMissing`; the queue then hands
the entry back untouched.

It checks presence, not values: the queue never keeps values, so a replay with *another*
principal's credentials cannot be told apart here (the server sees a new operation for that
principal). Replay with the credentials the call was made with.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import httpx

from retrysafe.client._errors import CredentialsMissing


def header_label(name: str) -> str:
    """``proxy-authorization`` -> ``Proxy-Authorization`` (for messages and ``-H`` hints)."""
    return "-".join(part.capitalize() for part in name.split("-"))


class RequireCredentials(httpx.Auth):
    """The client's auth (``inner``), then: every header in ``names`` must be present."""

    def __init__(self, inner: httpx.Auth | None, names: tuple[str, ...]) -> None:
        self.inner = inner if inner is not None else httpx.Auth()  # the base: sends as is
        self.names = names

    def check(self, request: httpx.Request) -> None:
        missing = tuple(n for n in self.names if not request.headers.get(n))
        if missing:
            labels = ", ".join(header_label(n) for n in missing)
            raise CredentialsMissing(
                f"not replayed: the parked call carried {labels}, which the queue never stores; "
                "without it the server would see another caller and run the operation again. "
                "Give the replaying client the same credential "
                f"(e.g. -H '{header_label(missing[0])}: ...')",
                missing=missing,
            )

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        flow = self.inner.sync_auth_flow(request)
        outgoing = next(flow)
        while True:
            self.check(outgoing)
            response = yield outgoing
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.inner.async_auth_flow(request)
        outgoing = await flow.__anext__()
        while True:
            self.check(outgoing)
            response = yield outgoing
            try:
                outgoing = await flow.asend(response)
            except StopAsyncIteration:
                return
