"""Durations as people write them in configuration: ``250ms``, ``30s``, ``5m``, ``24h``, ``7d``.

A bare number (or numeric string) means seconds. No I/O; the gateway's config loader and
:class:`~retrysafe._policy.Policy` (``Policy(ttl="24h")``) read durations with it.
"""

from __future__ import annotations

import math
import re

from retrysafe.errors import ConfigurationError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object, setting: str, *, allow_zero: bool = False) -> float:
    """``value`` in seconds; a :class:`ConfigurationError` naming ``setting`` when it is not one
    (zero only with ``allow_zero``: a ``wait`` or ``retention`` may be 0, a ``ttl`` not).

    Booleans are refused even though Python counts them as integers: ``ttl = true`` is a typo,
    not one second.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{setting}: expected a duration such as '30s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ConfigurationError(
            f"{setting}: {value!r} is not a duration; write a number of seconds or a number "
            "with a unit: ms, s, m, h, d (for example '250ms', '30s', '24h')"
        )
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        must = "must not be negative" if allow_zero else "must be positive"
        raise ConfigurationError(f"{setting}: a duration {must}, got {value!r}")
    return seconds
