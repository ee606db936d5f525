"""An agent process that crashes around a tool call (tests/telemetry/test_completion.py, SPEC 35a).

    python -m kit.telemetry_completion_child MODE DB AUDIT_LOG LEDGER

Calls the tool ``charge`` of :mod:`kit.telemetry_charge_tool` on the SQLite store DB, in
the agent run ``run-crash``, with its audit log going to AUDIT_LOG. MODE ``after``: the call
completes (its result is stored), then the process kills itself before the agent could use
the answer. MODE ``during``: the tool does its side effect and hangs there until the test kills
the process, holding the claim. Every run of the tool appends a line to LEDGER.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from kit.telemetry_charge_tool import RUN_ID, charge_tool
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.telemetry import AUDIT_LOGGER
from retrysafe.tools import agent_run


def main() -> None:
    mode, db, audit_path, ledger = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    logging.getLogger(AUDIT_LOGGER).addHandler(logging.FileHandler(audit_path))
    charge = charge_tool(SQLiteStore(db), ledger, hang=mode == "during")
    with agent_run(RUN_ID):
        charge("cus_1", 500)
    os.kill(os.getpid(), signal.SIGKILL)  # the crash: the agent never used the answer


if __name__ == "__main__":
    main()
