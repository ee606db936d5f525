"""`retrysafe demo` runs end to end (real uvicorn on loopback) and its checks can fail."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import retrysafe.cli._demo.run as demo_run
from retrysafe._records import ClaimResult
from retrysafe.cli._commands import cli
from retrysafe.cli._demo.run import run_demo
from retrysafe.stores.memory import MemoryStore


class ForgetfulStore(MemoryStore):
    """A broken store that loses every record before each claim: nothing is deduplicated."""

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        self.delete(id)
        return super().claim(id, fingerprint, lease)


async def test_demo_meets_every_expectation_on_sqlite() -> None:
    report = await run_demo()

    assert report.store_url.startswith("sqlite:///")
    assert report.url.startswith("http://127.0.0.1:")
    failed = [(s.name, c.what) for s in report.scenarios for c in s.checks if not c.ok]
    assert failed == []
    assert report.ok
    assert report.charged_twice == []
    assert report.charges == 4  # alice, bob, carol, erin: once each; dave was refused
    summary = {s.name: (s.ran, s.replayed, s.refused, s.outcomes) for s in report.scenarios}
    assert summary == {
        "Lost response, retried": (1, 1, [], {"executed": 1, "replayed": 1}),
        "20 concurrent duplicates": (1, 19, [], {"executed": 1, "replayed": 19}),
        "Key reused, different amount": (
            1,
            1,
            ["422 key-mismatch"],
            {"executed": 1, "replayed": 1},
        ),
        "No key on /charges": (0, 0, ["400 missing-key"], {}),
        "Flaky upstream (5xx)": (2, 0, [], {"executed": 2, "released": 1}),
        "Expired key (/holds)": (2, 1, [], {"executed": 1, "expired": 1, "replayed": 1}),
    }
    assert report.seconds > 0  # it says how long it ran (how long is the machine's business)


def test_cli_demo_prints_the_summary_and_exits_zero() -> None:
    result = CliRunner().invoke(cli, ["demo", "--scenarios", "--store", "memory://", "--verbose"])

    assert result.exit_code == 0, result.output
    assert "memory://" in result.output
    assert "customers charged twice: 0" in result.output
    assert "all 29 expectations met" in result.output
    assert "✓ bob is charged once" in result.output  # --verbose lists every check


async def test_demo_detects_a_store_that_deduplicates_nothing() -> None:
    report = await run_demo(store=ForgetfulStore())

    assert not report.ok
    assert "alice" in report.charged_twice  # the lost response's retry charged again
    assert "bob" in report.charged_twice  # so did the concurrent duplicates
    lost = report.scenarios[0]
    assert not lost.ok
    assert lost.ran == 2


def test_cli_demo_exits_non_zero_when_an_expectation_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo_run, "open_store", lambda url: ForgetfulStore())

    result = CliRunner().invoke(cli, ["demo", "--scenarios"])

    assert result.exit_code == 1, result.output
    assert "customers charged twice: 0" not in result.output
    assert "FAILED" in result.output


def test_cli_demo_with_an_unusable_store_is_a_one_line_error() -> None:
    result = CliRunner().invoke(
        cli, ["demo", "--scenarios", "--store", "sqlite:////no/such/dir/demo.db"]
    )

    assert result.exit_code == 2  # a path that cannot work (README, exit codes)
    assert "Error: SQLite store" in result.output
    assert "does not exist" in result.output
