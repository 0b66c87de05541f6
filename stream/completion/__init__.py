"""Completion: the ledger that decides when a record is finished (offsets, dedup marks, dead
letters), the dedup store in front of it, and the dead-letter producer."""
