"""Dedup window and identity graph behind one interface; SQLite (embedded) or Redis (shared).

`open_store(url)` picks the backend; see `stream.state.base.StateStore` for the guarantees.
"""

from stream.core.errors import StateError
from stream.state.base import (
    HeldEntry,
    Identifier,
    Kind,
    LinkResult,
    Person,
    StateStore,
)
from stream.state.open import open_store

__all__ = [
    "HeldEntry",
    "Identifier",
    "Kind",
    "LinkResult",
    "Person",
    "StateError",
    "StateStore",
    "open_store",
]
