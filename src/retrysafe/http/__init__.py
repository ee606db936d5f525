"""Server adapters: pure ASGI and WSGI middleware around the same engine."""
