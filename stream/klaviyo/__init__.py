"""Klaviyo's current REST API: payload mapping, the HTTP client and its typed errors."""
