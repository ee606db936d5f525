"""Smoke test of an installed wheel (run by .ci/package-smoke from an empty directory).

argv: the wheel's path, and the extra installed with it ("" for none). Checks that the package
comes from the installed wheel (not the source tree), that the wheel carries py.typed and no
tests, that each optional part imports with its extra and, without it, raises an ImportError
naming the extra to install; with the cli extra, that the command runs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

# part -> the extra it needs
PARTS = {
    "retrysafe.client": "client",
    "retrysafe.check": "client",
    "retrysafe.gateway": "gateway",
    "retrysafe.stores.redis": "redis",
    "retrysafe.stores.postgres": "postgres",
    "retrysafe.atomic.sqlalchemy": "sqlalchemy",
    "retrysafe.atomic.django": "django",
}
# what each extra brings beyond its own name (cli pulls httpx, uvicorn and starlette in)
COVERS = {"cli": {"client", "gateway"}, "gateway": {"client"}}


def main(wheel: str, extra: str) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "retrysafe/py.typed" in names, "the wheel has no py.typed"
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n], "tests in wheel"

    import retrysafe

    where = Path(retrysafe.__file__).resolve()
    assert "site-packages" in where.parts, f"retrysafe imported from {where}, not the wheel"

    importlib.import_module("retrysafe.testing")  # set_testing, RecordingStore: no extra needed

    installed = {extra} | COVERS.get(extra, set())
    for part, needs in PARTS.items():
        if needs in installed:
            importlib.import_module(part)  # the extra brings everything the part needs
        elif not extra:  # nothing optional is installed: the error names the extra
            try:
                importlib.import_module(part)
            except ImportError as exc:
                assert f"retrysafe[{needs}]" in str(exc), f"{part}: {exc!r} names no extra"
            else:
                raise AssertionError(f"{part} imported without the [{needs}] extra")

    command = str(Path(sys.executable).parent / "retrysafe")  # the venv's console script
    if extra == "cli":
        out = subprocess.run([command, "--help"], capture_output=True, text=True, check=True)
        assert "check" in out.stdout and "demo" in out.stdout, out.stdout
        scenarios = subprocess.run(
            [command, "demo", "--scenarios"], capture_output=True, text=True, timeout=600
        )
        assert scenarios.returncode == 0, scenarios.stdout + scenarios.stderr
    elif extra == "":
        done = subprocess.run([command, "--help"], capture_output=True, text=True)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "retrysafe[cli]" in done.stdout + done.stderr


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
