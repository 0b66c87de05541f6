"""Identity: a call's identifiers resolved to one person through the state store's graph,
anonymous calls held until someone names them, and erasure (forgetting, tombstones)."""
