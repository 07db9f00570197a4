"""Shared test settings.

Hypothesis runs derandomized with a fixed example budget so CI is repeatable;
``HYPOTHESIS_PROFILE=thorough python -m pytest`` is the thorough run: 300 random (not
derandomized) configurations per hypothesis test instead of 20, and the full cost where a
test shrinks one for CI's sake (``helpers.THOROUGH``).

One JAX persistent compilation cache serves the whole run: a new folder per run (so no run
reuses another's programs), set before any test process imports jax and shared by the
pytest-xdist workers and every subprocess they start, so a program compiled once (an
experiment's training step, the XLA loop the kernel is compared with, a layer that two tests
build) is not compiled again by the next process or the next jitted function that builds it.
``JAXRNN_TEST_JAX_CACHE=0`` turns it off.
"""

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

# function_scoped_fixture: parity_log only appends to the test's record, which all examples share on purpose.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402

_CACHE_OWNER = "_jaxrnn_jax_cache"


def pytest_configure(config):
    if os.environ.get("JAXRNN_TEST_JAX_CACHE"):  # a worker or subprocess of a run that set it up, or "0"
        return
    folder = tempfile.mkdtemp(prefix="jaxrnn-tests-jax-cache-")
    setattr(config, _CACHE_OWNER, folder)
    os.environ.update(
        {
            "JAXRNN_TEST_JAX_CACHE": folder,
            "JAX_COMPILATION_CACHE_DIR": folder,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
    )


def pytest_unconfigure(config):
    folder = getattr(config, _CACHE_OWNER, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


# Largest differences seen by the parity tests: {(check, dtype): value}, and configurations per cell kind.
# Each test records into its report's user_properties, which pytest-xdist sends from the workers to the
# main process; pytest_runtest_logreport gathers them there (or in the only process, without -n).
_PARITY: dict[tuple[str, str], float] = {}
_COUNTS: dict[str, int] = {}


@pytest.fixture
def parity_log(request):
    """Record ``(check, dtype, value)``; the terminal summary prints the largest of each."""

    def record(check: str, dtype: str, value: float) -> None:
        request.node.user_properties.append(("parity", (check, dtype, float(value))))

    def count(kind: str) -> None:
        request.node.user_properties.append(("parity_count", kind))

    record.count = count
    return record


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "parity":
            check, dtype, number = value
            _PARITY[(check, dtype)] = max(_PARITY.get((check, dtype), 0.0), number)
        elif name == "parity_count":
            _COUNTS[value] = _COUNTS.get(value, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    tr = terminalreporter
    tr.section("parity with torch: largest differences seen")
    tr.write_line("configurations compared: " + ", ".join(f"{k} {v}" for k, v in sorted(_COUNTS.items())))
    for (check, dtype), value in sorted(_PARITY.items()):
        tr.write_line(f"{dtype:8s} {check:34s} {value:.3e}")
