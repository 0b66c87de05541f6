"""Dedup window and identity graph behind one interface; SQLite (embedded) or Redis (shared).

`open_store(url)` picks the backend; see `stream.state.base.StateStore` for the guarantees.
"""

from stream.state.base import (
    Identifier,
    Kind,
    LinkResult,
    Person,
    StateError,
    StateStore,
)
from stream.state.open import open_store

__all__ = [
    "Identifier",
    "Kind",
    "LinkResult",
    "Person",
    "StateError",
    "StateStore",
    "open_store",
]
