"""The self-contained ``onceonly demo`` scenario (needs the ``[cli]`` extra)."""

from __future__ import annotations

from onceonly.demo.run import DemoReport, run_demo

__all__ = ["DemoReport", "run_demo"]
