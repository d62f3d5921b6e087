"""Shared Hypothesis settings of the fuzz suite (tests/unit/test_fuzz_*.py).

Bounded so that CI (2 cores) stays well within its limit: a fixed number of examples, a
per-example deadline, a derandomized search (the same examples on every run, so a CI
failure reproduces locally) and no example database written into the working tree.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_SLOW = settings(FUZZ, max_examples=40)  # examples that touch the file system or sockets
