"""The ``bench`` fixture: the bench script a test module names in ``BENCH``, loaded as a module."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench(request: pytest.FixtureRequest) -> ModuleType:
    path = request.module.BENCH
    spec = importlib.util.spec_from_file_location(f"retrysafe_bench_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module
