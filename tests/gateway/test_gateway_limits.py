"""The body caps and storing rules an operator sets in the gateway's TOML reach the middleware.

``max_body``, ``max_json_body``, ``max_cached_body``, ``release_statuses``,
``store_server_errors`` and ``settle_retry`` are :class:`~retrysafe.Policy` options; the gateway
reads them per route like the others (docs/gateway.md). The live tests drive a real gateway in
front of the real upstream process and count executions there.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from kit.gateway import GatewayFactory, Upstream
from retrysafe import Policy
from retrysafe.errors import ConfigurationError
from retrysafe.gateway import GatewayConfig, load_config
from retrysafe.gateway._config import RoutePolicy

UP = {"RETRYSAFE_UPSTREAM": "http://127.0.0.1:1"}
PROBLEM = "application/problem+json"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_limits_are_read_per_route_and_reach_the_policy(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[policy]\nmax_body = "64KiB"\nmax_json_body = 4096\nmax_cached_body = "2 MiB"\n'
        "release_statuses = [503, 429, 503]\nstore_server_errors = true\n"
        'settle_retry = "0s"\n'
        '[[routes]]\npath = "/upload"\nmax_body = "1GiB"\nrelease_statuses = []\n',
    )
    config = load_config(path, env=UP)
    default, upload = config.policy, config.route_for("/upload/x")
    assert (default.max_body, default.max_json_body, default.max_cached_body) == (
        64 * 1024,
        4096,
        2 * 1024 * 1024,
    )
    assert default.release_statuses == (429, 503)  # sorted, once each
    policy = default.policy()
    assert policy.max_body == 64 * 1024
    assert policy.max_json_body == 4096
    assert policy.max_cached_body == 2 * 1024 * 1024
    assert policy.release_statuses == frozenset({429, 503})
    assert policy.store_server_errors is True
    assert policy.settle_retry_s == 0.0
    # A route overrides what it names and inherits the rest from [policy].
    assert upload.max_body == 1 << 30
    assert upload.max_json_body == 4096
    assert upload.policy().release_statuses == frozenset()
    assert GatewayConfig.from_json(config.to_json()) == config  # what workers are handed


def test_defaults_are_the_middlewares_defaults(tmp_path: Path) -> None:
    route = load_config(write(tmp_path, ""), env=UP).policy.policy()
    library = Policy()
    for name in (
        "max_body",
        "max_json_body",
        "max_cached_body",
        "release_statuses",
        "store_server_errors",
        "settle_retry_s",
    ):
        assert getattr(route, name) == getattr(library, name), name


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('max_body = "10MB"', r"\[policy\] max_body: '10MB' is not a size; .*KiB, MiB, GiB"),
        ("max_body = -1", r"max_body: -1 is not a size"),
        ("max_cached_body = true", r"max_cached_body: True is not a size"),
        ("max_json_body = 1.5", r"max_json_body: 1.5 is not a size"),
        ("release_statuses = [200]", r"release_statuses: expected a list of 4xx/5xx"),
        ('release_statuses = ["429"]', r"release_statuses: expected a list of 4xx/5xx"),
        ("release_statuses = 429", r"release_statuses: expected a list of 4xx/5xx"),
        ('store_server_errors = "yes"', r"store_server_errors: expected true or false"),
        ('settle_retry = "later"', r"settle_retry: 'later' is not a duration"),
        ('max_bdy = "1KiB"', r"unknown key 'max_bdy' \(did you mean 'max_body'\?\)"),
    ],
)
def test_bad_limits_are_named_with_their_origin(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_config(write(tmp_path, "[policy]\n" + text + "\n"), env=UP)


def test_a_keyed_body_over_max_body_is_refused_before_the_upstream(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway(policy=RoutePolicy(anonymous="shared", max_body=1024))
    path = f"/echo/{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=gw.url) as client:
        too_big = client.post(path, content=b"x" * 1025, headers={"Idempotency-Key": "k-1"})
        fits = client.post(path, content=b"x" * 1024, headers={"Idempotency-Key": "k-2"})
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == PROBLEM
    assert fits.status_code == 200
    assert upstream.count(path) == 1  # only the body within the cap ran


def test_release_statuses_decide_whether_a_retry_runs_again(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    keep_429 = gateway(policy=RoutePolicy(anonymous="shared", release_statuses=()))
    default = gateway(policy=RoutePolicy(anonymous="shared"))
    for gw, runs in ((keep_429, 1), (default, 2)):
        key = {"Idempotency-Key": uuid.uuid4().hex}
        before = upstream.count("/status/429")
        with httpx.Client(base_url=gw.url) as client:
            answers = [client.post("/status/429", headers=key) for _ in range(2)]
        assert [a.status_code for a in answers] == [429, 429]
        assert upstream.count("/status/429") == before + runs
        replayed = "idempotent-replayed" in answers[1].headers
        assert replayed is (runs == 1)


def test_store_server_errors_replays_a_5xx(gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = gateway(policy=RoutePolicy(anonymous="shared", store_server_errors=True))
    key = {"Idempotency-Key": uuid.uuid4().hex}
    before = upstream.count("/status/500")
    with httpx.Client(base_url=gw.url) as client:
        answers = [client.post("/status/500", headers=key) for _ in range(2)]
    assert [a.status_code for a in answers] == [500, 500]
    assert "idempotent-replayed" in answers[1].headers
    assert upstream.count("/status/500") == before + 1
