"""The agent tool of the crash tests (tests/telemetry/test_completion.py), shared by the test
and its child process (telemetry_completion_child.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from retrysafe.stores._base import Store
from retrysafe.telemetry import Telemetry
from retrysafe.telemetry._observe import DEFAULT_TELEMETRY
from retrysafe.tools import idempotent_tool

RUN_ID = "run-crash"
HANG_S = 120.0  # the worker is killed long before: this only bounds a leaked process


def charge_tool(
    store: Store, ledger: Path, *, hang: bool = False, telemetry: Telemetry = DEFAULT_TELEMETRY
) -> Callable[[str, int], str]:
    """``charge(customer, cents)``: appends ``pid`` to ``ledger`` (the side effect), then,
    with ``hang``, waits until the process is killed, holding its claim."""

    @idempotent_tool(store, name="charge", telemetry=telemetry)
    def charge(customer: str, cents: int) -> str:
        with ledger.open("a") as f:  # O_APPEND: lines from two processes never interleave
            f.write(f"{os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())
        if hang:
            threading.Event().wait(HANG_S)
        return f"charged {customer} {cents}"

    return charge
