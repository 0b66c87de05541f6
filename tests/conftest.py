"""Shared fixtures: one real Kafka broker, Redis and Schema Registry per session, and helpers.

Hypothesis runs with a fixed seed and a bounded number of examples in CI (profile `ci`, the
default); `HYPOTHESIS_PROFILE=long scripts/test tests/unit` searches much longer, locally.
"""

import os

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
