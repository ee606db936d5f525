"""Child process of the cross-process link test (tests/telemetry/test_asgi_telemetry.py): run
one first execution on a SQLite store with its own OTel SDK, and print the span's ids as JSON
on stdout.

    python -m kit.telemetry_first_execution_child DB_PATH
"""

from __future__ import annotations

import asyncio
import json
import sys

from kit.asgi_call import call
from kit.telemetry import App, make_otel
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.sqlite import SQLiteStore


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
