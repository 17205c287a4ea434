"""Hypothesis settings shared by the property and fuzz tests: bounded, and reproducible in CI.

Each test states its example count for a normal run (a few seconds on two cores).
``DHEERA_FUZZ_SCALE=20`` multiplies every count, to search longer locally. With ``CI=true`` the
runs are derandomized (the same examples every run) and keep no example database.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCALE = float(os.environ.get("DHEERA_FUZZ_SCALE", "1") or 1)


def bounded(max_examples: int, **extra: Any) -> settings:
    """``max_examples`` (times DHEERA_FUZZ_SCALE), no per-example deadline, derandomized in CI."""
    options: dict[str, Any] = {
        "max_examples": max(1, round(max_examples * SCALE)),
        "deadline": None,
        "derandomize": CI,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        **extra,
    }
    if CI:
        options["database"] = None
    return settings(**options)
