"""``bench/fuzz.py`` still runs: a tiny run (one door: the others share the script) finds
nothing and says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"


def test_a_short_fuzz_run_reports_its_figures() -> None:
    door = "asgi"
    args = ["--requests", "150", "--door", door, "--pool", "15", "--seed", "7", "--workers", "2"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{door}: 15 scenarios drawn" in done.stdout
    assert "total violations 0" in done.stdout
    assert "crashes 0" in done.stdout
