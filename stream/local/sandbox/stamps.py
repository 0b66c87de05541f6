"""What the sandbox stamps things with: ULID-style ids and ISO 8601 UTC times.

Both run once per stored event or changed profile, so they avoid per-call system calls and
Python-level loops: random id tails come 1,024 at a time, a clock second is formatted once.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TAIL = bytes(_CROCKFORD.encode()[byte % 32] for byte in range(256))  # 5 random bits a byte
_random = random.Random()  # seeded from the OS; ids need to be unique, not secret
_prefix = (-1, "")  # (millisecond, its 10 characters): reused by the ids of that millisecond
_tails: list[str] = []  # random 16-character tails, made 1,024 at a time


def _crockford(value: int, width: int) -> str:
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(width)))


def _reseed() -> None:
    _random.seed()
    _tails.clear()


os.register_at_fork(after_in_child=_reseed)  # a forked child must not repeat the parent's ids


def _more_tails() -> None:
    chars = _random.randbytes(16 * 1024).translate(_TAIL).decode()
    _tails.extend(chars[i : i + 16] for i in range(0, len(chars), 16))


def new_id() -> str:
    """A 26-character ULID-style id, like Klaviyo's profile ids (time-ordered, random tail).

    10 characters of milliseconds, then 16 characters (80 bits) of randomness.
    """
    global _prefix
    ms = int(time.time() * 1000)
    if ms != _prefix[0]:
        _prefix = (ms, _crockford(ms, 10))
    while True:
        try:
            return _prefix[1] + _tails.pop()
        except IndexError:
            _more_tails()


def iso(moment: datetime) -> str:
    """Klaviyo's timestamp form: ISO 8601 in UTC with an explicit offset."""
    return moment.astimezone(UTC).isoformat()


_second = (-1, "")  # (Unix second, its "YYYY-MM-DDTHH:MM:SS")


def now_iso() -> str:
    """`iso(datetime.now(UTC))` without a datetime: the same clock reading, written 3x faster.

    It stamps every profile change, so a bulk import calls it once per profile.
    """
    global _second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    if seconds != _second[0]:
        _second = (seconds, datetime.fromtimestamp(seconds, UTC).isoformat()[:19])
    micros = nanos // 1000
    return f"{_second[1]}.{micros:06d}+00:00" if micros else f"{_second[1]}+00:00"
