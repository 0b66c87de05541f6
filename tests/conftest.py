"""Shared fixtures: one real Kafka broker per session (tests.kafka_fixture) and helpers."""

pytest_plugins = ["tests.kafka_fixture"]
