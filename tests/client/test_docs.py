"""The README's client example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_client_example_runs() -> None:
    section = README.read_text().split("## Client", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    calls = namespace["calls"]
    assert isinstance(calls, list)
    assert len(calls) == 2
