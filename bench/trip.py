"""A record's trip through the code: the package folders one track call enters, in order.

One identify and one track call (the identify first, so the track's person is known) go
through the real per-record stages and the send stage to the in-process sandbox; a profiler
hook notes each call into `stream/<folder>/` (the sandbox's own folder, `local/`, and the
metrics of `telemetry/` left out). Prints the folders the track call's trip enters, with
consecutive calls within one folder collapsed, then how often each folder was entered.

    python3 bench/trip.py
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.local.sandbox import SandboxConfig, SandboxServer  # noqa: E402
from stream.ops.produce import Encoder  # noqa: E402
from tests.support.inprocess import assembled, begin, offline_settings  # noqa: E402

PACKAGE = str(ROOT / "stream") + "/"
LEFT_OUT = ("local", "telemetry")

IDENTIFY = {"type": "identify", "messageId": "i-1", "timestamp": "2026-03-01T10:00:00Z",
            "userId": "u-1", "traits": {"email": "ada@example.com"}}  # fmt: skip
TRACK = {"type": "track", "messageId": "t-1", "timestamp": "2026-03-01T10:00:01Z",
         "userId": "u-1", "event": "Viewed Product", "properties": {"sku": "MUG"}}  # fmt: skip


def folder(frame: FrameType) -> str | None:
    name = frame.f_code.co_filename
    if not name.startswith(PACKAGE):
        return None
    part = name[len(PACKAGE) :].split("/")[0]
    part = part.removesuffix(".py")
    return None if part in LEFT_OUT else part


async def trip(call: dict[str, Any], warm: dict[str, Any]) -> list[str]:
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        settings = offline_settings(klaviyo_base_url=sandbox.url, batch_linger_ms=0)
        async with assembled(settings) as (running, _letters):
            parts = running.parts
            parts.sender.start()
            encoder = Encoder()
            await running.handler.handle(begin(parts.ledger, [encoder.encode(warm)], ("w", 0)))
            while parts.ledger.pending:
                await asyncio.sleep(0.01)
            entered: list[str] = []

            def hook(frame: FrameType, event: str, _arg: Any) -> None:
                where = folder(frame) if event == "call" else None
                if where is not None and (not entered or entered[-1] != where):
                    entered.append(where)

            records = begin(parts.ledger, [encoder.encode(call)], ("t", 0))
            sys.setprofile(hook)
            try:
                await running.handler.handle(records)
                while parts.ledger.pending:
                    await asyncio.sleep(0.001)
            finally:
                sys.setprofile(None)
            await parts.sender.close(timeout=5)
            return entered


def main() -> None:
    entered = asyncio.run(trip(TRACK, IDENTIFY))
    print("a track call's trip, folder by folder (consecutive calls in one folder collapsed):")
    print("  " + " → ".join(entered))
    counts = Counter(entered)
    print(f"{len(entered)} folder entries, {len(counts)} folders: " + ", ".join(
        f"{name} ×{n}" for name, n in counts.most_common()
    ))


if __name__ == "__main__":
    main()
