"""The offline report (SPEC 35): what an audit log says happened, and the SLOs it meets.

Nothing here runs on a request path. :mod:`retrysafe.telemetry` instruments each request and
writes the audit log (one JSON line per decision on the ``retrysafe.audit`` logger); this
package reads such a log afterwards, as ``retrysafe report`` does:
:mod:`~retrysafe.report.slo` is the SLO math (objectives, error budgets, burn-rate alerts;
pure computation) and :mod:`~retrysafe.report.summary` loads a log, summarizes it and renders
it as tables or a self-contained HTML page.
"""

from __future__ import annotations

from retrysafe.report.slo import Objective, evaluate, parse_objective
from retrysafe.report.summary import Log, Summary, html_page, load, render, summarize

__all__ = [
    "Log",
    "Objective",
    "Summary",
    "evaluate",
    "html_page",
    "load",
    "parse_objective",
    "render",
    "summarize",
]
