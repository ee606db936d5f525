"""The test kits: what more than one test module uses, each module named for what it holds.

stores         every store kind as a StoreKit (the ``kit`` fixture), FakeClock, require_service
store_servers  throwaway Redis / Redis Cluster / PostgreSQL servers, a round-trip counting proxy
servers        uvicorn / wsgiref / Werkzeug on loopback in a thread, RawClient (raw bytes)
doors          the four HTTP doors (ASGI, Starlette, WSGI, Flask), SpyStore, Gate, Handler
scopes         principal scopes for tests that send credentials
wakes          WakeProbe: polling off, every watch's wake-up observed (no timed waits)
uvicorn_app    an ASGI app a uvicorn child process serves (tests/stores/test_processes.py)
"""
