"""A burst of erasures: how fast a backlog of delete calls is deleted at Klaviyo, against the
data-privacy endpoint's ceiling (60 deletions a minute, 3 a second), and what waits meanwhile.

`--persons` people are identified first (so Klaviyo holds their profiles), then one delete call
each is published at once. A service (`klaviyo-stream run`, its own process, default settings
but `--settle`) and the sandbox (Klaviyo's real limits, `--time-scale` to run faster: 0.1 makes
a minute six seconds, for the limits and the governor alike) run until every deletion is
confirmed. Printed: deletion requests per minute while the backlog lasted against the (scaled)
ceiling, requests per person (one, unless a confirmation found a profile again), the most
deletions the service showed waiting (`klaviyo_stream_deletions_waiting` behind the fence plus
`klaviyo_stream_items_waiting{kind="deletion"}` for a send slot) and the oldest wait,
and the time from the burst to the last confirmation.

    python bench/deletions.py --persons 500                  # real limits: about 9 minutes
    python bench/deletions.py --persons 500 --time-scale 0.1 # about a minute
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime

from common import Broker, SandboxProcess, machine, parser
from live import Confirmations, ServiceProcess, get_json, producer

from stream.ops.produce import Encoder

DELETION = "POST /api/data-privacy-deletion-jobs"
STEADY = 60.0  # deletions a minute


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--persons", type=int, default=500)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=60.0, help="DELETION_SETTLE_SECONDS")
    args = p.parse_args()
    scale = args.time_scale
    ceiling = STEADY / scale  # deletions a real minute, at this time scale
    encoder = Encoder()
    people = [f"gone-{n}-{uuid.uuid4().hex[:6]}" for n in range(args.persons)]
    now = datetime.now(UTC).isoformat()
    with (
        Broker(args.bootstrap) as broker,
        SandboxProcess(rate_limits=True, time_scale=scale) as sandbox,
        tempfile.TemporaryDirectory() as state,
    ):
        topic = broker.topic("bench-deletions", partitions=3)
        extra = {
            "KLAVIYO_RATE_TIME_SCALE": str(scale),
            "DELETION_SETTLE_SECONDS": str(args.settle),
        }
        with ServiceProcess(broker.bootstrap, topic, sandbox.url, state, extra) as service:
            send = producer(broker.bootstrap)
            for person in people:
                call = {"type": "identify", "messageId": str(uuid.uuid4()), "userId": person,
                        "timestamp": now, "traits": {"email": f"{person}@example.com"}}
                send.produce(topic, encoder.encode(call), person.encode())
            send.flush(60)
            while len(get_json(f"{sandbox.url}/sandbox/profiles")["profiles"]) < len(people):
                time.sleep(1.0)
            confirmations = Confirmations(f"sqlite:///{state}/state.db")
            burst = time.time()
            for person in people:
                call = {"type": "delete", "messageId": str(uuid.uuid4()), "userId": person,
                        "timestamp": datetime.now(UTC).isoformat()}
                send.produce(topic, encoder.encode(call), person.encode())
            send.flush(60)
            most_waiting = oldest = 0.0
            requests: list[tuple[float, int]] = []  # (time, deletion requests answered)
            while confirmations.poll() < len(people):
                waiting = service.metric("klaviyo_stream_deletions_waiting") + service.metric(
                    "klaviyo_stream_items_waiting", kind="deletion"
                )  # behind the fence, and in the lane for a send slot
                most_waiting = max(most_waiting, waiting)
                oldest = max(oldest, service.metric("klaviyo_stream_deletion_oldest_wait_seconds"))
                answered = get_json(f"{sandbox.url}/sandbox/stats")["requests"].get(DELETION, {})
                requests.append((time.time(), int(answered.get("202", 0))))
                time.sleep(1.0)
            done = time.time()
            confirmations.close()
            stats = get_json(f"{sandbox.url}/sandbox/stats")["requests"].get(DELETION, {})
    # from the first answered deletion to the moment the last was answered (the settle and the
    # confirmations after it are not the backlog)
    sent = [(at, n) for at, n in requests if n > 0]
    sent = sent[: next((i + 1 for i, (_, n) in enumerate(sent) if n == sent[-1][1]), 0)]
    rate = 0.0
    if len(sent) >= 2 and sent[-1][0] > sent[0][0]:
        rate = (sent[-1][1] - sent[0][1]) / (sent[-1][0] - sent[0][0]) * 60
    total = int(stats.get("202", 0))
    print(f"machine: {machine()}")
    print(f"{len(people)} delete calls at once; time scale {scale:g}; settle {args.settle:g} s")
    print(
        f"deletion requests      : {total} ({total / len(people):.2f} per person), "
        f"{int(stats.get('429', 0))} answered 429"
    )
    print(
        f"deletions per minute   : {rate:.1f} = {rate / ceiling:.3f} of the ceiling "
        f"({ceiling:g} a minute at this time scale) while the backlog lasted"
    )
    print(f"most waiting           : {most_waiting:.0f} deletions; oldest wait {oldest:.0f} s")
    print(f"burst → all confirmed  : {done - burst:.0f} s")


if __name__ == "__main__":
    main()
