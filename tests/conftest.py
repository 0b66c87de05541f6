"""Shared fixtures: one real Kafka broker and one real Redis per session, and helpers."""

pytest_plugins = ["tests.kafka_fixture", "tests.redis_fixture"]
