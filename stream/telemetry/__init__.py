"""Telemetry: Prometheus metrics, the /metrics /healthz /readyz endpoints and JSON-line logs."""
