"""Stores of both backends (a SQLite file, a real Redis) for the state-store tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.state import StateStore, open_store
from stream.state.base import DEFAULT_DEDUP_WINDOW


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("clean_redis_url"))


@pytest.fixture
def dedup_window() -> float:
    """The stores' dedup window in seconds; a test module overrides it to watch expiry."""
    return DEFAULT_DEDUP_WINDOW


@pytest.fixture
def opener(store_url: str, dedup_window: float) -> Iterator[Callable[[], StateStore]]:
    """Opens stores on `store_url`; closes every one at the end of the test."""
    opened: list[StateStore] = []

    def open_() -> StateStore:
        opened.append(open_store(store_url, dedup_window_seconds=dedup_window))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(opener: Callable[[], StateStore]) -> StateStore:
    return opener()
