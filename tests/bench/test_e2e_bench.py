"""bench/e2e.py runs end to end, and its execution counts say what each run was.

A ``--quick`` run (uvicorn, one worker, 10 connections) on the memory and SQLite stores, with
each load generator present here (the Python one always, wrk where installed): every first
execution ran the handler once per answered request (plus at most one in flight per
connection when the run stopped), no replay ran it at all, and nothing answered an error.
Timings are not asserted.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("uvicorn", reason="the end-to-end bench serves through uvicorn")

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    # Loaded from its file, not by putting bench/ on sys.path: bench/ is not a package and its
    # module names (gateway, stores, ...) would shadow the test directories' own.
    spec = importlib.util.spec_from_file_location(f"retrysafe_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


generators = _load("e2e_load").generators

CONNECTIONS = 10
WAIT = 600  # bounds a hang only


@pytest.mark.slow
@pytest.mark.parametrize("generator", generators())
def test_quick_run_first_executes_and_replay_replays(generator: str, tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    command = [
        sys.executable, str(BENCH / "e2e.py"), "--quick", "--servers", "uvicorn-1",
        "--connections", str(CONNECTIONS), "--variants", "memory,sqlite",
        "--load", generator, "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    assert doc["not_run"] == []
    runs = {(m["variant"], m["mode"]): m for m in doc["measurements"]}
    assert set(runs) == {(v, mode) for v in ("memory", "sqlite") for mode in ("first", "replay")}
    for (variant, mode), m in runs.items():
        assert m["requests"] > 0, (variant, mode)
        assert m["errors"] == 0, (variant, mode, m)
        assert m["problem"] is None, (variant, mode, m)
        if mode == "first":
            assert m["requests"] <= m["executions"] <= m["requests"] + CONNECTIONS, m
        else:
            assert m["executions"] == 0, m
    assert "| retrysafe, memory |" in done.stdout
