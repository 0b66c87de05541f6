"""This replica's view of the group's tombstones, in bounded memory, and the rule that orders a
call against a deletion.

Every tombstone stays in the state store. In memory there is a Bloom filter of every hash
(about 1.25 bytes a tombstone, grown a layer at a time) and a bounded cache of the rows asked
for lately: an identifier the filter has never seen costs nothing, one it may have seen costs a
store round trip at most once while cached. `refresh` follows the store's tombstone marks: new
tombstones enter the filter and the cache as they are read (at most a heartbeat late for other
replicas' deletions; at once for this replica's own).

The rule (`older`): on the delete call's own partition Kafka's order decides (a record after
the delete is newer, whatever its clock says) unless the record is a historical load (a
dead-letter replay or a backfill: those are placed by their call time); elsewhere the call's
time decides against the deletion's time, which is the earlier of the delete call's time and
the moment it was read, so a delete stamped in the future never swallows a comeback.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from stream.state import Identifier, StateStore
from stream.state.base import Position, Tombstone, tombstone_hash

BITS_PER_ITEM = 10  # about 1 % false positives with 7 probes
PROBES = 7
CLEAR_SIZE = 200_000  # identifiers known to have no tombstone (until the next one comes)
FIRST_CAPACITY = 1 << 16
CACHE_SIZE = 100_000  # rows kept (tombstones asked for lately, and the newest ones)
PAGE = 10_000  # hashes or rows read per store round trip


class BloomFilter:
    """A layered Bloom filter of SHA-256 hex digests: each layer holds up to its capacity, a
    full one gets a successor twice its size. The digest's own bits are the probes (double
    hashing of its first two 64-bit words)."""

    def __init__(self, capacity: int = FIRST_CAPACITY) -> None:
        self._layers: list[tuple[bytearray, int, int]] = []  # (bits, size in bits, capacity)
        self._count = 0  # items in the newest layer
        self._add_layer(capacity)

    def _add_layer(self, capacity: int) -> None:
        size = capacity * BITS_PER_ITEM
        self._layers.append((bytearray(size // 8 + 1), size, capacity))
        self._count = 0

    @staticmethod
    def _probes(digest: str, size: int) -> Iterable[int]:
        first, step = int(digest[:16], 16), int(digest[16:32], 16) | 1
        bit, stride = first % size, step % size
        for _ in range(PROBES):
            yield bit
            bit = (bit + stride) % size

    def add(self, digest: str) -> None:
        bits, size, capacity = self._layers[-1]
        if self._count >= capacity:
            self._add_layer(capacity * 2)
            bits, size, _capacity = self._layers[-1]
        for bit in self._probes(digest, size):
            bits[bit >> 3] |= 1 << (bit & 7)
        self._count += 1

    def __contains__(self, digest: str) -> bool:
        first, step = int(digest[:16], 16), int(digest[16:32], 16) | 1
        for bits, size, _capacity in self._layers:
            bit = first % size
            stride = step % size
            for _ in range(PROBES):
                if not bits[bit >> 3] & (1 << (bit & 7)):
                    break
                bit = (bit + stride) % size
            else:
                return True
        return False

    @property
    def bytes(self) -> int:
        """Memory held by the bit arrays."""
        return sum(len(bits) for bits, _size, _capacity in self._layers)


def older(
    tomb: Tombstone, called_at: float, position: Position | None, historical: bool = False
) -> bool:
    """Whether a call (its time for ordering, where its record sits, whether it is a
    historical load) comes before the deletion `tomb` records (see the module)."""
    if (
        not historical
        and position is not None
        and tomb.position is not None
        and position[0] == tomb.position[0]
        and position[1] == tomb.position[1]
    ):
        return position[2] < tomb.position[2]
    return called_at < tomb.deleted_at


class Tombstones:
    """The group's tombstones as this replica knows them (see the module)."""

    def __init__(self, store: StateStore, cache_size: int = CACHE_SIZE) -> None:
        self._store = store
        self._cache_size = cache_size
        self._filter = BloomFilter()
        self._rows: OrderedDict[str, Tombstone | None] = OrderedDict()  # None: none stored
        self._clear: set[Identifier] = set()  # no tombstone, as of the last one learnt
        self.mark = 0  # the newest tombstone mark read
        self.count = 0  # tombstones entered into the filter

    def load(self) -> None:
        """Fill the filter with every tombstone hash in the store (at start), then follow."""
        mark = self._store.tombstone_mark()
        cursor = ""
        while True:
            hashes, cursor = self._store.tombstone_hashes(cursor, PAGE)
            for digest in hashes:
                self._filter.add(digest)
            self.count += len(hashes)
            if not cursor:
                break
        self.mark = max(self.mark, mark)
        self.refresh()  # those written while the filter was being filled

    def refresh(self) -> list[tuple[str, Tombstone]]:
        """Read the tombstones written since the last read (`StateError` when the store is
        down); returns them."""
        found: list[tuple[str, Tombstone]] = []
        while True:
            rows, mark = self._store.tombstones(self.mark, PAGE)
            if not rows:
                return found
            self.learn(rows)
            self.mark = max(self.mark, mark)
            found += rows
            if len(rows) < PAGE:
                return found

    def learn(self, rows: Sequence[tuple[str, Tombstone]]) -> None:
        """Tombstones this replica wrote or read: in the filter and the cache at once. The mark
        moves only as `refresh` reads the store in order (another replica's deletion may sit
        between the last one read and this replica's own)."""
        for digest, tomb in rows:
            self._filter.add(digest)
            self._remember(digest, tomb)
        self.count += len(rows)
        if rows:
            self._clear.clear()

    def of(self, identifiers: Sequence[Identifier]) -> dict[str, Tombstone]:
        """The tombstones of these identifiers (by hash): those known to have none since the
        last tombstone was learnt cost a set lookup, the others a hash and `rows`."""
        if not self.count:  # nobody was ever deleted: nothing to look at
            return {}
        clear = self._clear
        unknown = [ident for ident in identifiers if ident not in clear]
        if not unknown:
            return {}
        digests = {tombstone_hash(ident): ident for ident in unknown}
        found = self.rows(list(digests))
        if len(clear) > CLEAR_SIZE:
            clear.clear()
        clear.update(ident for digest, ident in digests.items() if digest not in found)
        return found

    def rows(self, digests: Sequence[str]) -> dict[str, Tombstone]:
        """The tombstones of these hashes: the filter rules most out, the cache answers what
        it holds, one store round trip the rest (`StateError` when the store is down)."""
        out: dict[str, Tombstone] = {}
        if not self.count:  # nobody was ever deleted: nothing to look at
            return out
        missing: list[str] = []
        for digest in digests:
            if digest not in self._filter:
                continue
            if digest in self._rows:
                tomb = self._rows[digest]
                self._rows.move_to_end(digest)
                if tomb is not None:
                    out[digest] = tomb
            else:
                missing.append(digest)
        if missing:
            found = self._store.tombstone_rows(missing)
            for digest in missing:
                tomb = found.get(digest)
                self._remember(digest, tomb)
                if tomb is not None:
                    out[digest] = tomb
        return out

    def _remember(self, digest: str, tomb: Tombstone | None) -> None:
        rows = self._rows
        rows[digest] = tomb
        rows.move_to_end(digest)
        while len(rows) > self._cache_size:
            rows.popitem(last=False)

    @property
    def memory(self) -> int:
        """Approximate bytes of the filter (the cache is bounded by entries)."""
        return self._filter.bytes
