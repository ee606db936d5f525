"""One vocabulary for the library and the gateway: the names and the duration strings agree.

The gateway's TOML said ``require_key`` where :class:`Policy` says ``required``, and took
``ttl = "24h"`` where ``Policy(ttl="24h")`` was refused. Now both say ``required`` (the old
name is an unknown key that points at the new one) and both read durations with units. The
policy is then driven through a real server: a ``wait="0s"`` duplicate answers 409 at once.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.servers import serve_asgi
from retrysafe import Policy
from retrysafe.errors import ConfigurationError
from retrysafe.gateway._config import load_config
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("24h", 86400.0), ("250ms", 0.25), ("7d", 604800.0), ("90", 90.0), (" 5m ", 300.0)],
)
def test_policy_durations_read_as_the_toml_does(given: str, seconds: float) -> None:
    policy = Policy(ttl=given, retention=given, lease=given, wait=given)
    assert policy.ttl_s == seconds
    assert policy.retention_s == seconds
    assert policy.lease_s == seconds
    assert policy.wait_s == seconds
    assert policy.ttl == seconds  # stored in seconds once made


def test_zero_is_allowed_where_the_number_zero_is() -> None:
    policy = Policy(wait="0s", retention="0", in_flight_retry_after="0ms")
    assert (policy.wait_s, policy.retention_s, policy.in_flight_retry_after_s) == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigurationError, match="ttl must be positive"):
        Policy(ttl="0s")


@pytest.mark.parametrize("bad", ["24 hours", "1h30m", "-5s", "soon", "", "nan", "1e3s"])
def test_a_bad_duration_string_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Policy(ttl=bad)
    message = str(info.value)
    assert message.startswith("ttl: ")
    assert repr(bad) in message
    if bad != "-5s":
        assert "'24h'" in message  # shows the form it wants


def test_the_decorator_takes_duration_strings_too() -> None:
    from retrysafe.tools._decorators import idempotent

    calls: list[int] = []

    @idempotent(store=MemoryStore(), ttl="1h", lease="30s", wait="1s")
    def charge(n: int) -> int:
        calls.append(n)
        return n

    assert charge(1) == 1
    assert charge(1) == 1
    assert calls == [1]


def test_timedelta_and_numbers_still_work() -> None:
    assert Policy(ttl=timedelta(hours=2)).ttl_s == 7200.0
    assert Policy(ttl=60).ttl_s == 60.0


def test_gateway_toml_says_required_like_the_policy(tmp_path: Path) -> None:
    good = tmp_path / "gw.toml"
    good.write_text(
        'upstream = "http://127.0.0.1:9"\n[policy]\nrequired = true\nttl = "1h"\n'
        '[[routes]]\npath = "/open"\nrequired = false\n'
    )
    config = load_config(good, env={})
    assert config.route_for("/pay").policy().required is True
    assert config.route_for("/open/x").policy().required is False
    assert config.route_for("/pay").policy().ttl_s == 3600.0


def test_the_old_gateway_name_is_an_unknown_key_pointing_at_the_new(tmp_path: Path) -> None:
    old = tmp_path / "gw.toml"
    old.write_text('upstream = "http://127.0.0.1:9"\n[policy]\nrequire_key = true\n')
    with pytest.raises(ConfigurationError) as info:
        load_config(old, env={})
    message = str(info.value)
    assert "unknown key 'require_key'" in message
    assert "did you mean 'required'" in message


KEYED = {"Idempotency-Key": "k1", "Authorization": "Bearer vocabulary"}


def test_a_string_wait_drives_a_real_server() -> None:
    entered, release = threading.Event(), threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    policy = Policy(wait="0s", in_flight_retry_after="2s")
    wrapped = ASGIIdempotencyMiddleware(app, store=MemoryStore(), policy=policy)
    with serve_asgi(wrapped) as base:
        first: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: first.append(httpx.post(base + "/pay", headers=KEYED, timeout=30))
        )
        worker.start()
        try:
            assert entered.wait(30)
            second = httpx.post(base + "/pay", headers=KEYED, timeout=30)
        finally:
            release.set()
            worker.join(30)
    assert second.status_code == 409
    assert second.headers["retry-after"] == "2"
    assert first[0].status_code == 201
