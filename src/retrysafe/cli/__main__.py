"""``python -m retrysafe.cli``: the ``retrysafe`` command (tests and benchmarks start it so)."""

from __future__ import annotations

import sys

from retrysafe.cli import main

sys.exit(main())
