"""Configuration: layering, per-route policies, and clear start-up errors naming the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrysafe._durations import parse_duration
from retrysafe.cli._proxy import proxy
from retrysafe.errors import ConfigurationError
from retrysafe.gateway._config import GatewayConfig, RoutePolicy, Timeouts, load_config
from retrysafe.gateway._serve import check_store

UP = {"RETRYSAFE_UPSTREAM": "http://127.0.0.1:9000"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def fails(
    match: str, path: Path | None = None, env: dict[str, str] | None = None, **flags: object
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_config(path, env=env if env is not None else {}, flags=flags)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("24h", 86400),
        ("7d", 604800),
        ("1.5", 1.5),
        (2, 2),
        (0.5, 0.5),
        (" 10 s ", 10),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 parsecs", "-1s", "0", 0, True, "1e3s", "s", None, [1]])
def test_bad_durations_name_the_setting(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^routes\[0\]\.ttl: "):
        parse_duration(bad, "routes[0].ttl")


def test_missing_upstream() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(env={})
    message = str(info.value)
    assert "--upstream" in message
    assert "RETRYSAFE_UPSTREAM" in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1/x", "not an http"),
        ("127.0.0.1:9000", "not an http"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999", "bad port"),
        ("http://127.0.0.1:9000/?q=1", "path prefix only"),
        ("http://user:pw@127.0.0.1", "path prefix only"),
    ],
)
def test_bad_upstream_url_names_its_origin(url: str, why: str) -> None:
    fails(f"^RETRYSAFE_UPSTREAM: .*{why}", env={"RETRYSAFE_UPSTREAM": url})
    fails(f"^--upstream: .*{why}", upstream=url)


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'upstream = "http://127.0.0.1:1"\nport = 1111\nhost = "127.0.0.2"\n'
        '[timeouts]\nread = "9s"\nconnect = "2s"\n',
    )
    env = {
        "RETRYSAFE_UPSTREAM": "http://127.0.0.1:2/api/",
        "RETRYSAFE_PORT": "2222",
        "RETRYSAFE_READ_TIMEOUT": "3s",
    }
    config = load_config(path, env=env, flags={"port": 3333, "host": None})
    assert config.upstream == "http://127.0.0.1:2/api"  # env beat the file; trailing / dropped
    assert config.port == 3333  # the flag beat both
    assert config.host == "127.0.0.2"  # a flag that was not given overrides nothing
    assert config.timeouts == Timeouts(connect=2.0, read=3.0)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'upstream = "http://127.0.0.1:1"\nworkers = 3\n')
    assert load_config(env={"RETRYSAFE_CONFIG": str(path)}).workers == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            'upstrem = "http://x"',
            r"gw.toml: top level: unknown key 'upstrem' \(did you mean 'upstream'\?\)",
        ),
        (
            '[timeouts]\nconect = "1s"',
            r"gw.toml: \[timeouts\]: unknown key 'conect' \(did you mean 'connect'\?\)",
        ),
        ('[policy]\nttl = "forever"', r"gw.toml: \[policy\] ttl: 'forever' is not a duration"),
        ('[policy]\nmethods = "POST"', r"gw.toml: \[policy\] methods: expected a list"),
        (
            '[policy]\nrequired = "yes"',
            r"gw.toml: \[policy\] required: expected true or false",
        ),
        ('[policy]\nbody_mode = "xml"', r"body_mode: must be 'bytes' or 'json'"),
        ('[policy]\nscope_header = "X Api"', r"scope_header: 'X Api' is not a valid header name"),
        (
            '[[routes]]\npath = "/a"\n[[routes]]\npath = "/b"\ntll = "1s"',
            r"gw.toml: routes\[1\]: unknown key 'tll' \(did you mean 'ttl'\?\)",
        ),
        ("[[routes]]\nrequired = true", r"routes\[0\]: a route needs a path"),
        ('[[routes]]\npath = "a"', r"routes\[0\].path: path must start with '/'"),
        ('[[routes]]\npath = "/_retrysafe/x"', r"is under admin_prefix"),
        (
            '[[routes]]\npath = "/a"\n[[routes]]\npath = "/a/"',
            r"routes\[1\].path: '/a' is configured twice",
        ),
        ('[[routes]]\npath = "/a"\nlease = "1ms"\nwait = "2s"', None),
        (
            '[policy]\nreplay_headers = ["Set-Cookie"]',
            r"\[policy\]: replay_headers may not include set-cookie",
        ),
        (
            '[[routes]]\npath = "/a"\nreplay_headers = "x"',
            r"routes\[0\].replay_headers: expected a list",
        ),
        ("port = 70000", r"gw.toml: port: expected a whole number from 0 to 65535"),
        ("workers = 0", r"gw.toml: workers: expected a whole number from 1"),
        ('shutdown_timeout = "soon"', r"gw.toml: shutdown_timeout: 'soon' is not a duration"),
        ("timeouts = 5", r"gw.toml: \[timeouts\]: expected a table"),
        ("upstream = [", r"is not valid TOML"),
    ],
)
def test_bad_file_settings_are_named(tmp_path: Path, text: str, match: str | None) -> None:
    path = write(tmp_path, text)
    if match is None:  # valid: proves the case above each bad one is not rejected wholesale
        load_config(path, env=UP)
        return
    fails(match, path, env=UP)


def test_missing_config_file(tmp_path: Path) -> None:
    fails("config file .*nope.toml' does not exist", tmp_path / "nope.toml", env=UP)


@pytest.mark.parametrize(
    "route", ["/a/../pay", "/pay/.", "/pay;v=1", "//pay", "/a%2F..%2Fb", "/a\\\\b"]
)
def test_route_paths_must_mean_one_path(tmp_path: Path, route: str) -> None:
    path = write(tmp_path, f'[[routes]]\npath = "{route}"\n')
    fails(r"routes\[0\].path: .* can be read as different paths", path, env=UP)


def test_routes_differing_in_case_are_one_route(tmp_path: Path) -> None:
    path = write(tmp_path, '[[routes]]\npath = "/pay"\n[[routes]]\npath = "/PAY/"\n')
    fails(r"routes\[1\].path: '/PAY' is configured twice", path, env=UP)


def test_bad_method_names_the_route(tmp_path: Path) -> None:
    path = write(tmp_path, '[[routes]]\npath = "/pay"\nmethods = ["post", "BAD METHOD"]\n')
    fails(r"routes\[0\].methods: 'BAD METHOD' is not an HTTP method", path, env=UP)


def test_routes_inherit_the_default_policy_and_match_longest_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[policy]\nttl = "1h"\nscope_header = "X-Api-Key"\n'
        '[[routes]]\npath = "/pay"\nrequired = true\n'
        '[[routes]]\npath = "/pay/refunds/"\nmethods = ["post", "delete"]\nttl = "5m"\n',
    )
    config = load_config(path, env=UP)
    assert config.policy == RoutePolicy(ttl=3600.0, scope_header="X-Api-Key")
    pay = config.route_for("/pay/charges")
    refunds = config.route_for("/pay/refunds/1")
    assert pay == RoutePolicy(path="/pay", ttl=3600.0, scope_header="X-Api-Key", required=True)
    assert refunds.methods == ("POST", "DELETE")
    assert refunds.ttl == 300.0
    assert refunds.required is False  # inherits [policy], not its sibling route
    assert config.route_for("/payments") is config.policy  # whole segments only
    assert config.route_for("/pay") == pay
    assert config.route_for("/PAY/Refunds/1") == refunds  # letter case never escapes a route
    policy = refunds.policy()
    assert policy.methods == frozenset({"POST", "DELETE"})
    assert {"content-type", "content-encoding"} <= policy.replay_headers
    assert policy.ttl_s == 300.0


def test_resolved_config_round_trips_for_workers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'upstream = "http://127.0.0.1:1/base"\nworkers = 4\n[timeouts]\nread = "250ms"\n'
        '[[routes]]\npath = "/a"\nrequired = true\nbody_mode = "json"\n',
    )
    config = load_config(path, env={})
    assert GatewayConfig.from_json(config.to_json()) == config


def test_bad_store_url_fails_at_start_up(tmp_path: Path) -> None:
    config = load_config(env=UP, flags={"store": "mongodb://127.0.0.1/x"})
    with pytest.raises(ConfigurationError, match=r"^store: unknown store URL scheme"):
        check_store(config)
    (tmp_path / "dir.db").mkdir()
    config = load_config(env=UP, flags={"store": f"sqlite:///{tmp_path / 'dir.db'}"})
    with pytest.raises(ConfigurationError, match=r"^store: cannot use sqlite store"):
        check_store(config)


@pytest.mark.parametrize(
    ("args", "env", "match"),
    [
        ([], {}, "no upstream configured"),
        (["--upstream", "gopher://x"], {}, "--upstream: 'gopher://x' is not an http"),
        (
            [],
            {"RETRYSAFE_UPSTREAM": "http://127.0.0.1:1", "RETRYSAFE_PORT": "http"},
            "RETRYSAFE_PORT: expected a whole number",
        ),
        (
            ["--upstream", "http://127.0.0.1:1", "--read-timeout", "fast"],
            {},
            "--read-timeout: 'fast' is not a duration",
        ),
        (
            ["--upstream", "http://127.0.0.1:1", "--store", "nosuch://"],
            {},
            "store: unknown store URL scheme",
        ),
    ],
)
def test_cli_reports_bad_configuration(args: list[str], env: dict[str, str], match: str) -> None:
    clean: dict[str, str | None] = {
        var: None
        for var in (
            "RETRYSAFE_UPSTREAM",
            "RETRYSAFE_STORE_URL",
            "RETRYSAFE_PORT",
            "RETRYSAFE_CONFIG",
            "RETRYSAFE_HOST",
            "RETRYSAFE_WORKERS",
            "RETRYSAFE_CONNECT_TIMEOUT",
            "RETRYSAFE_READ_TIMEOUT",
        )
    }
    result = CliRunner().invoke(proxy, args, env={**clean, **env})
    assert result.exit_code == 2
    assert "bad configuration: " in result.output
    assert re.search(re.escape(match), result.output), result.output


def test_proxy_is_registered_on_the_retrysafe_command() -> None:
    from retrysafe.cli._commands import cli

    runner = CliRunner()
    assert "proxy" in runner.invoke(cli, ["--help"]).output
    result = runner.invoke(cli, ["proxy", "--upstream", "nope"], env={"RETRYSAFE_UPSTREAM": None})
    assert result.exit_code == 2
    assert "bad configuration: --upstream: 'nope' is not an http" in result.output
