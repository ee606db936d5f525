"""The full agent demo: an agent buys and refunds through a faulty network, crashes, resumes.

For each mode — with retrysafe, then the same run with idempotency switched off — this module:

1. serves the payments API (:mod:`retrysafe.cli._demo.payments`; behind retrysafe's middleware on a
   SQLite store in a temp dir, or bare) with the fault layer (:mod:`retrysafe.cli._demo.faults`) in
   front, under uvicorn on a free 127.0.0.1 port;
2. starts the agent (:mod:`retrysafe.cli._demo.agent`) as a separate OS process and follows its
   progress lines;
3. kills that process with SIGKILL from *inside* a purchase halfway through the plan — the
   charge is booked, the answer never arrives — and starts a second process with the same
   durable run id, which resumes from the agent's last checkpoint;
4. reads the truth afterwards: the API's own ledger (charges and refunds per order), the
   fault layer's counts, the agent processes' reports and the DLQ file.

:func:`run_agent_demo` returns an :class:`AgentDemoReport` whose ``checks`` are the demo's
expectations (no duplicates with retrysafe; duplicates without); the CLI exits 1 if one fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retrysafe.cli._demo.faults import FaultCounts, FaultLayer
from retrysafe.cli._demo.payments import PaymentsLedger, build_payments_app
from retrysafe.cli._demo.plan import AgentSettings, Faults, make_plan
from retrysafe.cli._demo.scenarios import Check
from retrysafe.cli._demo.server import serving
from retrysafe.client.dlq import DeadLetterQueue
from retrysafe.stores.url import open_store

MODES = {True: "with retrysafe", False: "without"}
_STDERR_TAIL = 2000


class DemoFailed(RuntimeError):
    """The demo itself broke (an agent process died unexpectedly, the deadline passed)."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    operations: int = 300  # purchases + refunds
    seed: int = 7
    faults: Faults = field(default_factory=Faults)
    lanes: int = 8
    crash: bool = True  # kill the agent process mid-run and resume in a new one
    crash_at: float = 0.5  # ... during this fraction of the planned purchases
    compare: bool = True  # also run without idempotency
    deadline: float = 120.0  # per mode

    def __post_init__(self) -> None:
        if self.operations < 1 or self.lanes < 1:
            raise ValueError("operations and lanes must be at least 1")
        if not 0.0 < self.crash_at < 1.0:
            raise ValueError("crash_at must be between 0 and 1")


class Progress(Protocol):
    """Where the demo reports as it goes (the CLI draws rich progress bars)."""

    def begin(self, mode: str, total: int) -> None: ...
    def advance(self, mode: str, completed: int) -> None: ...
    def note(self, mode: str, text: str) -> None: ...


class NoProgress:
    def begin(self, mode: str, total: int) -> None:
        pass

    def advance(self, mode: str, completed: int) -> None:
        pass

    def note(self, mode: str, text: str) -> None:
        pass


@dataclass
class WorkerRun:
    """One agent process, as the orchestrator saw it."""

    pid: int = 0
    returncode: int | None = None
    killed: bool = False  # by the demo, on purpose
    resumed_orders: int = 0  # orders it found in the checkpoint
    finished: bool = False  # it reported "done"
    unfinished: int = 0
    dlq_depth: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # its last report


@dataclass
class ModeResult:
    """One run of the scenario (with or without retrysafe) and what the ledger says."""

    idempotent: bool
    operations: int
    purchases: int
    refunds_planned: int
    counts: FaultCounts = field(default_factory=FaultCounts)
    workers: list[WorkerRun] = field(default_factory=list)
    crashed_at_charge: int | None = None
    crashed_order: str | None = None  # the order whose purchase was running at the kill
    charges: int = 0
    refunds: int = 0
    duplicates: int = 0
    overcharged_cents: int = 0
    missing: int = 0  # planned purchases or refunds that never happened
    charges_per_order: Counter[str] = field(default_factory=Counter)
    dlq_states: Counter[str] = field(default_factory=Counter)
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def mode(self) -> str:
        return MODES[self.idempotent]

    def _sum(self, name: str) -> int:
        return sum(int(w.stats.get(name, 0)) for w in self.workers)

    @property
    def tool_claims(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.workers:
            total.update(w.stats.get("tool_claims", {}))
        return total

    @property
    def trips(self) -> int:
        return self._sum("trips")

    @property
    def deferrals(self) -> int:
        return self._sum("deferrals")

    @property
    def dlq_replays(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.workers:
            total.update(w.stats.get("dlq", {}))
        return total

    @property
    def finished(self) -> bool:
        return bool(self.workers) and self.workers[-1].finished


@dataclass
class AgentDemoReport:
    options: DemoOptions
    runs: list[ModeResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def run(self, idempotent: bool) -> ModeResult | None:
        return next((r for r in self.runs if r.idempotent is idempotent), None)


def _package_root() -> str:
    import retrysafe

    return str(Path(retrysafe.__file__).resolve().parents[1])


class _Mode:
    """The moving parts of one mode's run: the current agent process and the crash trigger."""

    def __init__(self, result: ModeResult, options: DemoOptions, progress: Progress) -> None:
        self.result = result
        self.options = options
        self.progress = progress
        self.process: asyncio.subprocess.Process | None = None
        self.current: WorkerRun | None = None
        self.crash_at = max(1, round(result.purchases * options.crash_at))
        self.done_ops = 0

    def on_charge(self, charges: int, order: str) -> None:
        """Called by the payments API inside a purchase, after booking it: maybe crash now."""
        if not self.options.crash or self.result.crashed_at_charge is not None:
            return
        if charges >= self.crash_at and self.process and self.process.returncode is None:
            self.result.crashed_at_charge = charges
            self.result.crashed_order = order
            if self.current is not None:
                self.current.killed = True
            self.process.kill()  # SIGKILL: no cleanup, no goodbye, answers in flight are lost

    async def worker(self, settings: AgentSettings, number: int) -> WorkerRun:
        run = WorkerRun()
        mode = self.result.mode
        log_path = Path(settings.state_dir) / f"agent-{number}.log"
        # The child imports this very retrysafe, whatever the working directory.
        paths = [_package_root(), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "retrysafe.cli._demo.agent",
                settings.to_json(),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
            )
            self.process, self.current, run.pid = proc, run, proc.pid
            try:
                assert proc.stdout is not None
                async for line in proc.stdout:
                    self._event(run, mode, line)
                run.returncode = await proc.wait()
            finally:
                if proc.returncode is None:  # cancelled (deadline): do not leave it behind
                    proc.kill()
                    await proc.wait()
        if run.returncode != 0 and not run.killed:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-_STDERR_TAIL:]
            raise DemoFailed(f"agent process {run.pid} exited with {run.returncode}:\n{tail}")
        return run

    def _event(self, run: WorkerRun, mode: str, line: bytes) -> None:
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:  # a line cut short by SIGKILL
            return
        match event.get("event"):
            case "start":
                run.resumed_orders = int(event["resumed_orders"])
                self.done_ops = int(event["resumed_ops"])
                self.progress.advance(mode, self.done_ops)
            case "order":
                self.done_ops += int(event["ops"])
                run.stats = event["stats"]
                self.progress.advance(mode, self.done_ops)
            case "phase":
                self.progress.note(mode, str(event["text"]))
            case "done":
                run.finished = True
                run.unfinished = int(event["unfinished"])
                run.dlq_depth = int(event["dlq_depth"])
                run.stats = event["stats"]


async def run_mode(
    options: DemoOptions, idempotent: bool, root: Path, progress: Progress
) -> ModeResult:
    """One full run: serve, start the agent, crash it, resume it, tally the ledger."""
    started = time.perf_counter()
    plan = make_plan(options.operations, options.seed)
    refunds_planned = sum(o.refund for o in plan)
    result = ModeResult(idempotent, options.operations, len(plan), refunds_planned)
    state = root / ("retrysafe" if idempotent else "off")
    state.mkdir()
    ledger = PaymentsLedger()
    store = open_store(f"sqlite:///{state / 'server.db'}") if idempotent else None
    layer = FaultLayer(build_payments_app(ledger, store=store), options.faults, seed=options.seed)
    result.counts = layer.counts
    mode = _Mode(result, options, progress)
    ledger.on_charge = mode.on_charge
    progress.begin(result.mode, options.operations)
    try:
        async with asyncio.timeout(options.deadline), serving(layer) as url:
            settings = AgentSettings(
                url=url,
                state_dir=str(state),
                run_id=f"demo-run-{options.seed}",
                operations=options.operations,
                seed=options.seed,
                idempotent=idempotent,
                lanes=options.lanes,
            )
            result.workers.append(await mode.worker(settings, 1))
            if result.workers[0].killed:
                progress.note(
                    result.mode,
                    f"killed (SIGKILL) in charge #{result.crashed_at_charge}, resuming",
                )
                result.workers.append(await mode.worker(settings, 2))
    except TimeoutError as exc:
        raise DemoFailed(f"{result.mode}: not finished within {options.deadline:.0f} s") from exc
    finally:
        if store is not None:
            await store.aclose()
    _tally(result, ledger, plan_orders={o.order: o.refund for o in plan})
    progress.note(result.mode, f"done: {result.duplicates} duplicate(s)")
    dlq = DeadLetterQueue(state / "dlq.db")
    try:
        entries = dlq.entries(limit=100_000)
    finally:
        dlq.close()
    result.dlq_states = Counter(str(e.state) for e in entries)
    result.dlq_reasons = Counter(e.reason for e in entries)
    result.seconds = time.perf_counter() - started
    return result


def _tally(result: ModeResult, ledger: PaymentsLedger, plan_orders: dict[str, bool]) -> None:
    charged, refunded = ledger.charges_per_order(), ledger.refunds_per_order()
    result.charges = len(ledger.charges)
    result.charges_per_order = charged
    result.refunds = len(ledger.refunds)
    result.duplicates = ledger.duplicates()
    result.overcharged_cents = ledger.overcharged_cents()
    result.missing = sum(1 for o in plan_orders if not charged[o]) + sum(
        1 for o, refund in plan_orders.items() if refund and not refunded[o]
    )


def judge(report: AgentDemoReport) -> None:
    """The demo's expectations, appended to ``report.checks``."""
    expect = report.checks.append
    crash = report.options.crash
    on = report.run(True)
    if on is not None:
        expect(Check("with retrysafe: no order charged or refunded twice", on.duplicates == 0))
        expect(
            Check(
                "with retrysafe: every planned purchase and refund happened",
                on.missing == 0 and on.finished and on.workers[-1].unfinished == 0,
            )
        )
        if crash:
            expect(
                Check(
                    "the agent process was killed mid-run and a new one resumed the run",
                    len(on.workers) == 2 and on.workers[0].killed and on.workers[1].finished,
                )
            )
            expect(
                Check(
                    "the tool call cut off by the kill was taken over with the same key",
                    on.tool_claims["recovered"] >= 1,
                )
            )
        expect(
            Check(
                "with retrysafe: the DLQ was drained",
                on.finished and on.workers[-1].dlq_depth == 0 and not on.dlq_states["failed"],
            )
        )
    off = report.run(False)
    if off is not None:
        expect(Check("without idempotency: some orders were charged twice", off.duplicates > 0))


async def run_agent_demo(
    options: DemoOptions | None = None, progress: Progress | None = None
) -> AgentDemoReport:
    """Run the scenario with retrysafe, then (``options.compare``) without; judge both."""
    options = options or DemoOptions()
    progress = progress or NoProgress()
    report = AgentDemoReport(options)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retrysafe-agent-demo-") as tmp:
        for idempotent in (True, False) if options.compare else (True,):
            report.runs.append(await run_mode(options, idempotent, Path(tmp), progress))
    report.seconds = time.perf_counter() - started
    judge(report)
    return report


__all__ = [
    "AgentDemoReport",
    "DemoFailed",
    "DemoOptions",
    "ModeResult",
    "NoProgress",
    "Progress",
    "WorkerRun",
    "run_agent_demo",
    "run_mode",
]
