"""A Django project in one child process: the ORM writes a charge behind the WSGI middleware,
or behind the ASGI middleware with uvicorn serving it (a sync view, run in asgiref's thread for
the request, or an async view using the async ORM).

Settings are configured here, in the child, so Django's one-per-process configuration never
meets the other tests'. ``migrate`` runs retrysafe's migration (the record tables) and creates
the test model's table; the store then opens the same file.
"""

from __future__ import annotations

import io
import json
from multiprocessing.connection import Connection
from typing import Any

from kit.atomic_sqlite_child import _pause, policy

_conn: Connection | None = None


def create_charge(request: Any) -> Any:
    from django.http import JsonResponse

    from kit.atomic_django_app.models import Charge
    from retrysafe.atomic import django as dj_atomic

    assert _conn is not None
    doc = json.loads(request.body)
    pause = request.META.get("HTTP_X_PAUSE")
    _pause(_conn, doc["key"], "before_write", pause)
    dj_atomic.transaction()
    charge = Charge.objects.create(key=doc["key"], cents=doc["cents"])
    _pause(_conn, doc["key"], "after_write", pause)
    return JsonResponse({"key": doc["key"], "row": charge.pk}, status=201)


async def acreate_charge(request: Any) -> Any:
    """The async view: ``atransaction()`` and the async ORM, both on the request's DB thread."""
    from django.http import JsonResponse

    from kit.atomic_django_app.models import Charge
    from retrysafe.atomic import django as dj_atomic

    assert _conn is not None
    doc = json.loads(request.body)
    pause = request.META.get("HTTP_X_PAUSE")
    _pause(_conn, doc["key"], "before_write", pause)
    await dj_atomic.atransaction()
    charge = await Charge.objects.acreate(key=doc["key"], cents=doc["cents"])
    _pause(_conn, doc["key"], "after_write", pause)  # blocks the loop: it is about to die
    return JsonResponse({"key": doc["key"], "row": charge.pk}, status=201)


def failing(request: Any) -> Any:
    """Writes, then fails as ``?how=`` says: ``raise`` (an exception) or ``500``."""
    from django.http import JsonResponse

    from kit.atomic_django_app.models import Charge
    from retrysafe.atomic import django as dj_atomic

    dj_atomic.transaction()
    Charge.objects.create(key=request.headers["Idempotency-Key"], cents=1)
    if request.GET.get("how") == "raise":
        raise RuntimeError("declined")
    return JsonResponse({"error": "upstream"}, status=500)


async def afailing(request: Any) -> Any:
    from django.http import JsonResponse

    from kit.atomic_django_app.models import Charge
    from retrysafe.atomic import django as dj_atomic

    await dj_atomic.atransaction()
    await Charge.objects.acreate(key=request.headers["Idempotency-Key"], cents=1)
    if request.GET.get("how") == "raise":
        raise RuntimeError("declined")
    return JsonResponse({"error": "upstream"}, status=500)


def _urls() -> list[Any]:
    from django.urls import path

    return [
        path("charges", create_charge),
        path("acharges", acreate_charge),
        path("fail", failing),
        path("afail", afailing),
    ]


urlpatterns: list[Any] = []


def configure(databases: dict[str, Any], **extra: Any) -> None:
    """Django's settings for this process: retrysafe's app and the test model's app
    (kit/atomic_django_app/)."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="retrysafe-atomic-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=["retrysafe.atomic.django", "kit.atomic_django_app"],
        DATABASES=databases,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        **extra,
    )
    django.setup()
    urlpatterns[:] = _urls()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)


def django_worker(path: str, door: str, is_atomic: bool, conn: Connection) -> None:
    """Serve ``(key, cents, pause)`` charge jobs through Django; same protocol as
    :func:`kit.atomic_sqlite_child.charge_worker`. ``door``: ``wsgi``, or ``asgi`` /
    ``asgi-async`` (uvicorn serving the sync / the async view)."""
    configure({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}})
    from retrysafe.stores.sqlite import SQLiteStore

    store = SQLiteStore(path)
    if door == "wsgi":
        serve(store, is_atomic, conn)
    else:
        serve_asgi(store, conn, "/acharges" if door == "asgi-async" else "/charges")


def serve(store: Any, is_atomic: bool, conn: Connection) -> None:
    """Django's WSGI application behind the middleware, fed jobs from ``conn``."""
    global _conn
    _conn = conn
    from django.core.wsgi import get_wsgi_application

    from retrysafe.http import WSGIIdempotencyMiddleware

    app = WSGIIdempotencyMiddleware(
        get_wsgi_application(), store=store, policy=policy(), atomic=is_atomic
    )
    conn.send(("ready", "", None))
    while True:
        key, cents, pause = conn.recv()
        body = json.dumps({"key": key, "cents": cents}).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/charges",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_IDEMPOTENCY_KEY": key,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
        }
        if pause is not None:
            environ["HTTP_X_PAUSE"] = pause
        got: list[str] = []
        chunks = app(environ, lambda status, headers, exc_info=None, got=got: got.append(status))
        answer = b"".join(chunks)
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        assert got == ["201 Created"], (got, answer)
        _pause(conn, key, "after_commit", pause)
        conn.send(("done", key, json.loads(answer)))


def serve_asgi(store: Any, conn: Connection, route: str) -> None:
    """Django's ASGI application behind the middleware, served by uvicorn on a loopback port;
    a thread feeds it the jobs from ``conn`` as HTTP requests to ``route``."""
    global _conn
    _conn = conn
    import socket
    import threading

    import uvicorn
    from django.core.asgi import get_asgi_application

    from retrysafe.http import ASGIIdempotencyMiddleware

    app = ASGIIdempotencyMiddleware(
        get_asgi_application(), store=store, policy=policy(), atomic=True
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{route}"
    threading.Thread(target=_drive, args=(server, url, conn), daemon=True).start()
    server.run(sockets=[sock])


def django_asgi_server(path: str, conn: Connection) -> None:
    """uvicorn serving Django on the SQLite file ``path`` for requests from the parent: sends
    ``("ready", base URL)``."""
    configure({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}})
    from retrysafe.stores.sqlite import SQLiteStore

    serve_asgi(SQLiteStore(path), conn, "")


def _drive(server: Any, url: str, conn: Connection) -> None:
    import time

    import httpx

    while not server.started:
        time.sleep(0.01)  # polling a condition: uvicorn says when it listens
    if not url.endswith("charges"):  # the parent sends its own requests
        conn.send(("ready", url))
        return
    conn.send(("ready", "", None))
    with httpx.Client(timeout=60) as client:
        while True:
            key, cents, pause = conn.recv()
            headers = {"Idempotency-Key": key, **({"X-Pause": pause} if pause else {})}
            reply = client.post(url, json={"key": key, "cents": cents}, headers=headers)
            assert reply.status_code == 201, (reply.status_code, reply.text)
            _pause(conn, key, "after_commit", pause)
            conn.send(("done", key, reply.json()))
