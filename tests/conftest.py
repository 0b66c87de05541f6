"""Shared fixtures: one real Kafka broker per run; Redis and a Schema Registry per worker session.

Tests run on pytest-xdist workers (`-n` in pyproject's addopts; `-n0` runs them in this
process). Tests marked `slow` (tens of seconds each: a service under load, a crash loop) are
handed out first, one test at a time (`--maxschedchunk=1`), so the run does not end on one
of them while the other workers idle.

Hypothesis runs with a fixed seed and a bounded number of examples in CI (profile `ci`, the
default); `HYPOTHESIS_PROFILE=long scripts/test tests/unit` searches much longer, locally.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.support.kafka",
    "tests.support.redis",
    "tests.support.logs",
    "tests.support.registry",
]

settings.register_profile(
    "ci",
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (stable otherwise): the longest jobs start first on a worker pool."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
