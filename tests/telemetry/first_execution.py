"""Child process of the cross-process link test: run one first execution on a SQLite store
with its own OTel SDK, and print the span's ids as JSON on stdout."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.telemetry._asgi import call
from tests.telemetry.conftest import make_otel
from tests.telemetry.test_asgi_telemetry import App

from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.policy import Policy
from retrysafe.scopes import shared_scope
from retrysafe.stores import SQLiteStore


def main(path: str) -> None:
    otel = make_otel()
    store = SQLiteStore(path)
    mw = ASGIIdempotencyMiddleware(
        App(), store=store, telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    answer = asyncio.run(call(mw))
    store.close()
    (span,) = otel.ours()
    ctx = span.get_span_context()
    print(json.dumps({"status": answer.status, "trace": ctx.trace_id, "span": ctx.span_id}))


if __name__ == "__main__":
    main(sys.argv[1])
