"""The self-contained ``retrysafe demo`` scenario (needs the ``[cli]`` extra)."""

from __future__ import annotations

from retrysafe.demo.agentdemo import AgentDemoReport, DemoOptions, run_agent_demo
from retrysafe.demo.run import DemoReport, run_demo

__all__ = ["AgentDemoReport", "DemoOptions", "DemoReport", "run_agent_demo", "run_demo"]
