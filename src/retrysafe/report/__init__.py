"""The offline report (SPEC 35): what an audit log says happened, and the SLOs it meets.

Nothing here runs on a request path. :mod:`retrysafe.telemetry` instruments each request and
writes the audit log (one JSON line per decision on the ``retrysafe.audit`` logger); this
package reads such a log afterwards, as ``retrysafe report`` does:
the SLO math (:class:`Objective`, :func:`evaluate`: error budgets, burn-rate alerts; pure
computation, in ``_slo.py``), and :func:`load`, :func:`summarize`, :func:`render` and
:func:`html_page`, which load a log, summarize it and render it as tables or a self-contained
HTML page (``_summary.py``).
"""

from __future__ import annotations

from retrysafe.report._slo import Objective, evaluate, parse_objective
from retrysafe.report._summary import Log, Summary, html_page, load, render, summarize

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
