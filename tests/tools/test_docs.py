"""The README's "Agent tools" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def test_readme_agent_tools_example_runs() -> None:
    section = README.read_text().split("## Agent tools", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    assert namespace["refunds"] == [("cus_1", 500), ("cus_1", 500)]
