"""The test kits: every module of the suite that is not a test, a conftest or an ``__init__``.

Each is named for what it holds, ``<area>_<what>`` (or just ``<area>``), and code that runs in
a child process ends in ``_child`` (started as ``python -m kit.<name>`` through ``children``,
or a ``multiprocessing`` spawn target). tests/unit/test_suite_layout.py keeps it so.

Shared
  stores                 every store kind as a StoreKit (the ``kit`` fixture), FakeClock,
                         require_service
  store_claims           what the store tests share: ids, fingerprints, a response, the
                         claim-result checks (claimed, existing, first_claim)
  store_child            store-test code run in spawned children, the CheckThenSet racy store
  store_uvicorn_child    an ASGI app a uvicorn child process serves (tests/stores)
  store_servers          throwaway Redis / Redis Cluster / PostgreSQL servers, a round-trip
                         counting proxy
  servers                uvicorn / wsgiref / Werkzeug on loopback in a thread, RawClient
  doors                  the four HTTP doors (ASGI, Starlette, WSGI, Flask), SpyStore, Gate
  scopes                 principal scopes for tests that send credentials
  wakes                  WakeProbe: polling off, every watch's wake-up observed
  asgi_call              drive an ASGI app with raw messages, record its answer
  children               how a test starts a ``*_child`` module (``tests/`` on its path)
Atomic completion (tests/atomic)
  atomic_db              one kit per database for the SIGKILL tests, Worker, its fixtures
  atomic_pg              a PostgreSQL store and ledger table per test (``pg`` fixture)
  atomic_ledger          issue 8's ledger scenario (also ``python -m kit.atomic_ledger``)
  atomic_django_app      the Django app (the ``Charge`` model) of the Django children
  atomic_sqlite_child    SQLite charge/three-phase workers and the pipe protocol they share
  atomic_pg_child        the PostgreSQL workers (psycopg, SQLAlchemy)
  atomic_aiosqlite_child a worker on async SQLAlchemy over aiosqlite
  atomic_django_child    Django (WSGI, or ASGI under uvicorn) on SQLite
  atomic_django_pg_child Django on PostgreSQL, and named scenarios run there
  atomic_gate_child      one writer waiting in SQLite's writer gate
  atomic_ledger_child    one uvicorn worker of the ledger scenario
Client (tests/client)
  client_harness         a scripted network behind the sync or async transport, FakeTime
  client_servers         a raw fault server, a fault proxy, uvicorn apps on loopback
  dlq                    dead-letter queue URLs on every backend (``dlq_url`` fixture)
  client_completion_child  a keyed call's completion against a real server, OTel installed
  client_span_child      client attempt spans with an OTel SDK installed
  dlq_replay_child       one replayer of a shared dead-letter queue
Gateway (tests/gateway)
  gateway                the upstream process, in-process and child-process gateways
  gateway_upstream_child the upstream app (counts executions in an append-only log)
Telemetry (tests/telemetry)
  telemetry              OTel SDK providers with in-memory exporters, AuditLines, App
  telemetry_charge_tool  the agent tool of the crash tests
  telemetry_completion_child       an agent process crashing around a tool call
  telemetry_first_execution_child  a first execution in another process (span links)
Tools (tests/tools)
  tools_flavour          sync/async twins: one test body checks both
  tools_models           module-level types the serializer finds by name
  tools_child            an agent tool called from several processes
Others
  fuzz                   the HTTP fuzzer (tests/adversarial, bench/fuzz.py)
  doc_blocks             the fenced code blocks of the docs (tests/docs)
"""
