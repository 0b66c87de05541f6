"""Klaviyo's per-account, per-endpoint rate limits: fixed burst (1 s) and steady (1 min) windows,
and a daily one where the spec names it (list creation: 150/d).

Klaviyo documents a fixed-window algorithm; a request counts against every window and is
refused (429) when any is full. Headers describe the steady window, as Klaviyo's do.
Every private key of the account shares the same budget, so the limiter (one per account) is
keyed by endpoint only. `time_scale` shortens both windows for fast benchmarks; `factor`
scales every quota (an account with limits of its own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .spec import RateLimit


@dataclass
class _Window:
    length: float
    limit: int
    start: float = 0.0
    count: int = 0

    def roll(self, now: float) -> None:
        """Start a new window if the current one is over (windows are back to back)."""
        if now >= self.start + self.length:
            self.start += math.floor((now - self.start) / self.length) * self.length
            self.count = 0

    def reset_in(self, now: float) -> float:
        return max(0.0, self.start + self.length - now)


@dataclass(frozen=True)
class Decision:
    """The limiter's answer: allowed or not, plus what the response headers should say."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        """RateLimit-* always; Retry-After only on a refusal."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class RateLimiter:
    """Fixed burst and steady windows per endpoint; `enforce=False` only counts."""

    def __init__(
        self,
        time_scale: float = 1.0,
        enforce: bool = True,
        clock: Callable[[], float] = time.monotonic,
        factor: float = 1.0,
    ) -> None:
        self._scale = time_scale
        self._factor = factor
        self._enforce = enforce
        self._clock = clock
        self._windows: dict[str, tuple[_Window, ...]] = {}

    def reset(self) -> None:
        """Forget every window (used by POST /sandbox/reset)."""
        self._windows.clear()

    def hit(self, endpoint: str, quota: RateLimit, *, count: bool = True) -> Decision:
        """Count one request to `endpoint` and say whether it may proceed.

        `count=False` only reports the current state (for answers that spend no quota).
        """
        now = self._clock()
        windows = self._windows.get(endpoint)
        if windows is None:
            windows = (
                _Window(1.0 * self._scale, self._scaled(quota.burst), start=now),
                _Window(60.0 * self._scale, self._scaled(quota.steady), start=now),
            )
            if quota.daily is not None:
                windows += (_Window(86_400.0 * self._scale, self._scaled(quota.daily), start=now),)
            self._windows[endpoint] = windows
        steady = windows[1]
        for window in windows:
            window.roll(now)
        full = [w for w in windows if w.count >= w.limit]
        allowed = not (self._enforce and full and count)
        if allowed and count:
            for window in windows:
                window.count += 1
        wait = max((w.reset_in(now) for w in full), default=0.0)
        return Decision(
            allowed=allowed,
            limit=steady.limit,
            remaining=max(0, steady.limit - steady.count),
            reset=max(0, math.ceil(steady.reset_in(now))),
            retry_after=max(1, math.ceil(wait)),
        )

    def _scaled(self, limit: int) -> int:
        return max(1, round(limit * self._factor))

    def state(self) -> dict[str, list[dict[str, float | int | str]]]:
        """Each endpoint's windows now: name, used, limit, seconds to reset (for inspection)."""
        now = self._clock()
        out: dict[str, list[dict[str, float | int | str]]] = {}
        for endpoint, windows in self._windows.items():
            rows: list[dict[str, float | int | str]] = []
            for name, window in zip(("burst", "steady", "daily"), windows, strict=False):
                window.roll(now)
                rows.append(
                    {
                        "window": name,
                        "used": window.count,
                        "limit": window.limit,
                        "resets_in": round(window.reset_in(now), 3),
                    }
                )
            out[endpoint] = rows
        return out
