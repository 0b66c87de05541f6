"""Pytest plugin: one real Schema Registry per test session (Apicurio Registry 3.0.9, Confluent's
API under /apis/ccompat/v7), like the session's Kafka broker.

`schema_registry` starts a `stream.local.registry.LocalRegistry` the first time a test asks for
it (its first start fetches the bundle from Maven Central; later ones use the cache). It runs as
production registries do: basic auth with role-based access (the users below), HTTPS beside
HTTP (a self-signed certificate, `ca`), BACKWARD compatibility. Its storage is kept on disk, so
a test may `stop()` it and `start()` it again (same port, every schema under its id); such a
test must leave it running. Tests use their own topics, hence their own subjects.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from stream.local.registry import LocalRegistry
from tests.support.tls import self_signed

ROLES = {"admin": "sr-admin", "writer": "sr-developer", "reader": "sr-readonly", "nobody": None}
PASSWORD_PREFIX = "Reg-Pa55-"  # distinctive: the secret tests grep output for it
CLIENT_TIMEOUT = 10  # seconds: a registry that does not answer fails a test, never hangs it


@dataclass
class Registry:
    """The session's registry and what a test needs to talk to it."""

    server: LocalRegistry
    passwords: dict[str, str]
    ca: Path  # the CA file that verifies `server.tls_url`

    @property
    def url(self) -> str:
        return self.server.url

    def user_info(self, user: str) -> str:
        """`NAME:PASSWORD`, as SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO takes it."""
        return f"{user}:{self.passwords[user]}"

    def client(self, user: str = "writer", **conf: Any) -> SchemaRegistryClient:
        """confluent-kafka's client as `user` (close it: `with registry.client() as c:`)."""
        return SchemaRegistryClient(
            {
                "url": self.url,
                "basic.auth.user.info": self.user_info(user),
                "timeout": CLIENT_TIMEOUT,
                **conf,
            }
        )

    def settings(self, user: str = "reader") -> dict[str, str]:
        """Settings (service_env / service_settings keywords) reading through it as `user`."""
        return {
            "schema_registry_url": self.url,
            "schema_registry_basic_auth_user_info": self.user_info(user),
        }

    def ensure_running(self) -> None:
        """Start it again if a test stopped it (and failed before starting it)."""
        if not self.server.is_running():
            self.server.start()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The session's real Schema Registry, started on first use, stopped at the end."""
    work = tmp_path_factory.mktemp("registry")
    self_signed(work)  # cert.pem (the CA to trust) and key.pem
    passwords = {user: PASSWORD_PREFIX + secrets.token_hex(6) for user in ROLES}
    server = LocalRegistry(
        work / "server",
        users={user: (passwords[user], role) for user, role in ROLES.items()},
        tls=(work / "cert.pem", work / "key.pem"),
        persistent=True,
    )
    server.start()
    try:
        yield Registry(server, passwords, work / "cert.pem")
    finally:
        server.stop()


@pytest.fixture
def registry(schema_registry: Registry) -> Registry:
    """The session's registry, running (a test that stopped it got it back)."""
    schema_registry.ensure_running()
    return schema_registry
