"""Shared test settings.

Hypothesis runs derandomized with a fixed example budget so CI is repeatable;
``HYPOTHESIS_PROFILE=thorough pytest`` explores many more random configurations.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402

# Largest differences seen by the parity tests: {(check, dtype): (value, test id)}.
_PARITY: dict[tuple[str, str], float] = {}
_COUNTS: dict[str, int] = {}


@pytest.fixture(scope="session")
def parity_log():
    """Record ``(check, dtype, value)``; the terminal summary prints the largest of each."""

    def record(check: str, dtype: str, value: float) -> None:
        key = (check, dtype)
        _PARITY[key] = max(_PARITY.get(key, 0.0), float(value))

    def count(kind: str) -> None:
        _COUNTS[kind] = _COUNTS.get(kind, 0) + 1

    record.count = count
    return record


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    tr = terminalreporter
    tr.section("parity with torch: largest differences seen")
    tr.write_line("configurations compared: " + ", ".join(f"{k} {v}" for k, v in sorted(_COUNTS.items())))
    for (check, dtype), value in sorted(_PARITY.items()):
        tr.write_line(f"{dtype:8s} {check:34s} {value:.3e}")
