"""WSGI: a response with a declared length is stored before its last bytes reach the server,
so a client that has the whole answer can always have it replayed (every store kind)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kit.scopes import shared_id
from retrysafe._policy import Policy
from retrysafe._records import State
from retrysafe._scopes import shared_scope
from retrysafe.http import WSGIIdempotencyMiddleware

if TYPE_CHECKING:
    from kit.stores import StoreKit

CHUNKS = [b'{"charge": ', b'"ch_1"}']


def environ(key: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/charges",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": "2",
        "HTTP_IDEMPOTENCY_KEY": key,
        "wsgi.input": io.BytesIO(b"{}"),
    }


def answering(declared: bool) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        headers = [("Content-Type", "application/json")]
        if declared:
            headers.append(("Content-Length", str(sum(map(len, CHUNKS)))))
        start_response("201 Created", headers)
        yield from CHUNKS

    return app


def served(kit: StoreKit, key: str, declared: bool) -> list[State | None]:
    """Iterate the response as a server does; the record's state as each chunk is handed out."""
    middleware = WSGIIdempotencyMiddleware(
        answering(declared), store=kit.store, policy=Policy(scope=shared_scope)
    )
    body = middleware(environ(key), lambda status, headers, exc_info=None: None)
    states: list[State | None] = []
    try:
        for chunk in body:
            assert chunk in CHUNKS
            record = kit.store.get(shared_id(kit.store, key))
            states.append(record.state if record is not None else None)
    finally:
        body.close()  # type: ignore[attr-defined]
    record = kit.store.get(shared_id(kit.store, key))
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.body == b"".join(CHUNKS)
    return states


def test_a_declared_length_is_stored_before_its_last_chunk_goes_out(kit: StoreKit) -> None:
    assert served(kit, "declared", declared=True) == [State.IN_FLIGHT, State.COMPLETED]


def test_without_a_declared_length_the_record_is_stored_at_the_end(kit: StoreKit) -> None:
    # chunks are not held back (that would delay a stream); the record completes at the end
    assert served(kit, "streamed", declared=False) == [State.IN_FLIGHT, State.IN_FLIGHT]
