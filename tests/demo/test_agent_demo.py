"""The full agent demo at a small size: real uvicorn, real agent processes, a real SIGKILL.

Every figure asserted here comes from outside retrysafe: the payments API's own ledger, the
fault layer's counts, the agent processes' exit codes.
"""

from __future__ import annotations

import signal

import pytest
from click.testing import CliRunner

from retrysafe.cli._commands import cli
from retrysafe.cli._demo.agentdemo import DemoOptions, ModeResult, run_agent_demo
from retrysafe.cli._demo.plan import Faults, make_plan

pytestmark = pytest.mark.slow

CALM = Faults(loss_rate=0.0, burst_rate=0.0, latency_ms=0.0, slow_rate=0.0)


def killed_then_resumed(run: ModeResult) -> None:
    first, second = run.workers
    assert first.killed
    assert first.returncode == -signal.SIGKILL
    assert not first.finished  # it never got to say goodbye
    assert second.returncode == 0
    assert second.finished
    assert second.unfinished == 0


async def test_summary_no_duplicates_with_retrysafe_some_without() -> None:
    faults = Faults(loss_rate=0.15, burst_rate=0.02, burst_seconds=0.2, slow_rate=0.0)
    options = DemoOptions(operations=40, seed=3, faults=faults, lanes=4)

    report = await run_agent_demo(options)

    on, off = report.run(True), report.run(False)
    assert on is not None
    assert off is not None
    assert [c.what for c in report.checks if not c.ok] == []
    assert report.ok
    plan = make_plan(40, 3)
    purchases, refunds = len(plan), sum(o.refund for o in plan)
    for run in (on, off):
        assert (run.operations, run.purchases, run.refunds_planned) == (40, purchases, refunds)
        assert run.counts.lost > 0  # answers really were lost after the handler ran
        assert run.counts.retries > 0
        killed_then_resumed(run)
        assert run.missing == 0  # both get everything done in the end ...
    # ... but only with retrysafe exactly once.
    assert on.duplicates == 0
    assert (on.charges, on.refunds) == (purchases, refunds)
    assert set(on.charges_per_order.values()) == {1}
    assert on.overcharged_cents == 0
    assert on.counts.replays > 0  # the retries of lost answers were served from the store
    assert off.duplicates > 0
    assert off.charges > purchases
    assert off.overcharged_cents > 0
    assert off.counts.replays == 0  # no middleware: nothing is ever replayed


async def test_crash_mid_purchase_then_resume_charges_that_order_once() -> None:
    # No network faults: the only trouble is the SIGKILL inside one purchase.
    options = DemoOptions(operations=30, seed=5, faults=CALM, lanes=3)

    report = await run_agent_demo(options)

    on, off = report.run(True), report.run(False)
    assert on is not None
    assert off is not None
    for run in (on, off):
        killed_then_resumed(run)
        assert run.crashed_order is not None
        assert run.crashed_at_charge == max(1, round(run.purchases * options.crash_at))
        assert run.counts.lost == run.counts.retries == 0
    # With retrysafe the tool call cut off by the kill is taken over (same tool key, so the
    # same derived HTTP key) and the API replays the charge it had already made.
    assert on.tool_claims["recovered"] >= 1
    assert on.counts.replays >= 1
    assert on.charges_per_order[on.crashed_order] == 1
    assert on.duplicates == 0
    assert report.ok
    # Without it, the resumed process buys that order again (and every order finished
    # after the last checkpoint).
    assert off.charges_per_order[off.crashed_order] == 2
    assert off.duplicates >= 1


async def test_without_crash_only_one_process_runs() -> None:
    report = await run_agent_demo(
        DemoOptions(operations=12, faults=CALM, lanes=2, crash=False, compare=False)
    )

    (on,) = report.runs
    assert len(on.workers) == 1
    assert on.workers[0].returncode == 0
    assert on.crashed_at_charge is None
    assert on.duplicates == 0
    assert on.missing == 0
    assert report.ok


def test_cli_prints_the_side_by_side_table_and_exits_zero() -> None:
    result = CliRunner().invoke(cli, ["demo", "-n", "24", "--seed", "2", "--lanes", "3"])

    assert result.exit_code == 0, result.output
    out = result.output
    assert "with retrysafe" in out
    assert "without" in out
    assert "duplicates (money moved twice)" in out
    assert "killed inside charge" in out
    assert "✓ with retrysafe: no order charged or refunded twice" in out
    assert "all 6 expectations met" in out


def test_cli_exits_non_zero_when_an_expectation_fails() -> None:
    # No faults and no crash: the run without idempotency has nothing to duplicate, so the
    # demo's point ("duplicates without retrysafe") is not made - and it says so.
    args = ["demo", "-n", "10", "--no-crash", "--loss-rate", "0", "--burst-rate", "0"]
    result = CliRunner().invoke(cli, [*args, "--slow-rate", "0", "--lanes", "2"])

    assert result.exit_code == 1, result.output
    assert "✗ FAILED: without idempotency: some orders were charged twice" in result.output
    assert "1 of 4 expectations FAILED" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss-rate", "1.5"], "1.5 is not in the range"),
        (["-n", "0"], "0 is not in the range"),
        (["--store", "memory://"], "--store applies to --scenarios"),
    ],
)
def test_cli_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["demo", *args])

    assert result.exit_code == 2
    assert message in result.output


def test_plan_adds_up_and_is_deterministic() -> None:
    for n in (1, 2, 7, 300):
        plan = make_plan(n, 11)
        assert sum(o.operations for o in plan) == n
        assert plan == make_plan(n, 11)
        assert len({o.order for o in plan}) == len(plan)
    assert make_plan(300, 1) != make_plan(300, 2)
    with pytest.raises(ValueError, match="at least 1"):
        make_plan(0, 1)
