"""A part imported without its extra names the extra to install (the wheel smoke test in
.ci/package-smoke checks the same in a clean virtualenv; this one runs in the suite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PARTS = [
    ("retrysafe.client", "httpx", "client"),
    ("retrysafe.check", "httpx", "client"),
    ("retrysafe.gateway", "uvicorn", "gateway"),
    ("retrysafe.stores.redis", "redis", "redis"),
    ("retrysafe.stores.postgres", "psycopg", "postgres"),
    ("retrysafe.atomic.sqlalchemy", "sqlalchemy", "sqlalchemy"),
    ("retrysafe.atomic.django", "django", "django"),
]


@pytest.mark.parametrize(("part", "dependency", "extra"), PARTS)
def test_a_missing_dependency_names_the_extra(part: str, dependency: str, extra: str) -> None:
    # sys.modules[name] = None makes `import name` fail as if it were not installed
    code = (
        f"import sys; sys.modules[{dependency!r}] = None\n"
        f"try:\n    import {part}\nexcept ImportError as exc:\n    print(exc)\n"
        "else:\n    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'retrysafe[{extra}]'" in out.stdout, out.stdout + out.stderr
    assert repr(dependency) in out.stdout
