"""Fixtures: a real sandbox on loopback and an aiohttp client speaking to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    """A sandbox with default settings on 127.0.0.1 and a free port."""
    async with SandboxServer(SandboxConfig()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session with no default headers (tests choose what they send)."""
    async with aiohttp.ClientSession() as session:
        yield session
