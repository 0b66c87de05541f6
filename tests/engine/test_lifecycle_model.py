"""The deletion and consent lifecycle under random traffic (hypothesis stateful), on both state
backends, through the real per-record stage, completion ledger, gate, fence and deliver stage
against the sandbox, which makes profiles from event and subscription jobs asynchronously
(`tests/support/lifecycle_model.py` steps the pipeline by hand).

Three people with fixed identifiers: alice and bob share a browser (anonymousId d-shared),
carol has her own (d-carol). Each person's named calls are keyed to one partition, as producers
key by person; anonymous calls sit on a third partition. The rules publish identify and track
calls, consent and list changes (`integrations.Klaviyo`: subscribe, unsubscribe, suppress, list
add and remove), anonymous events and opt-outs, delete calls, comebacks (any call after a
delete), and backfill replays of earlier calls (historical: ordered by call time, with a fresh
messageId as `produce --backfill` would); call times rise, some run behind. Other rules move the
pipeline: fetch records of a partition, send one batch of a lane, keep profile-making requests
on the wire and answer them in any order, heartbeat, let the settle time pass, have Klaviyo
apply its queued jobs, commit, revoke a partition, crash the service (a new one over the same
store reads what was not committed again; what the dead one had on the wire still lands, and
its mark counts until its liveness runs out).

Whenever the pipeline is quiescent (every record read and finished, nothing in the gate or
the lanes, Klaviyo's jobs applied, every deletion confirmed), it must hold:

1. a deleted person without a later call has no profile at Klaviyo, and no event from before
   their deletion is on their profile afterwards;
2. nobody else's profile is touched by a deletion: Klaviyo deleted only profiles of deleted
   people, and everyone else identified has their profile, with their identifiers;
3. per person and channel (email with suppression, sms, each list), the latest change by call
   time since their last deletion is what Klaviyo holds (nothing asked: nothing held);
4. no opt-out is dropped without a dead letter: each unsubscribe was sent (3), superseded by a
   newer call, dead-lettered, or its person deleted; and every one was counted in
   `klaviyo_stream_opt_outs_total{ending}`.

Where the outcome depends on timing the model does not follow (a backfilled subscribe checked
against an opt-out Klaviyo stamped later; an anonymous opt-out that may have met its person
before or after they were named), the model leaves that channel unchecked.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stream.klaviyo.consent import DELETION
from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from stream.local.sandbox.resources import profile_snapshot
from stream.telemetry import metrics
from tests.support.lifecycle_model import (
    KINDS,
    Clock,
    Held,
    Letter,
    Replica,
    Topic,
    Wire,
    call,
    lifecycle_settings,
    run_dry,
    settle,
)

SETTLE = 1.0  # deletion_settle_seconds: shorter than a request may stay on the wire
PARTITIONS = 3
ANONYMOUS_PARTITION = 2
LIST = "L1"
ENDINGS = ("sent", "superseded", "dead_lettered", "person_deleted")
COVERAGE: Counter[str] = Counter()  # what the checks met (a failing run prints it)


@dataclass(frozen=True)
class Person:
    user_id: str
    email: str
    phone: str
    partition: int
    device: str


PEOPLE = {
    "alice": Person("u-alice", "alice@example.com", "+14155550101", 0, "d-shared"),
    "bob": Person("u-bob", "bob@example.com", "+14155550102", 1, "d-shared"),
    "carol": Person("u-carol", "carol@example.com", "+14155550103", 0, "d-carol"),
}
NAMES = st.sampled_from(sorted(PEOPLE))
# one change a call asks: (verb, channel), and the per-call options that ask it
ASKS: dict[tuple[str, str], dict[str, Any]] = {
    ("subscribe", "email"): {"subscribe": {"email": True}},
    ("subscribe", "sms"): {"subscribe": {"sms": True}},
    ("unsubscribe", "email"): {"unsubscribe": ["email"]},
    ("unsubscribe", "sms"): {"unsubscribe": ["sms"]},
    ("suppress", "email"): {"suppress": True},
    ("unsuppress", "email"): {"suppress": False},
    ("add", LIST): {"lists": {"add": [LIST]}},
    ("remove", LIST): {"lists": {"remove": [LIST]}},
}
ASK = st.sampled_from(sorted(ASKS))
LAG = st.sampled_from([0, 0, 0, 3, 7, 31])  # seconds a call's clock runs behind


@dataclass
class Sent:
    """A published call, as the model knows it."""

    mid: str
    kind: str  # identify | track | delete | anonymous
    at: float
    partition: int
    offset: int
    person: str | None = None
    device: str | None = None
    ask: tuple[str, str] | None = None
    backfill: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Life:
    """A person's calls since a deletion (`deletion`), in Kafka order, and the backfilled
    calls before it that are newer by call time (`maybe`: back if the deletion was read before
    they left, erased with it if not)."""

    deletion: Sent | None = None
    calls: list[Sent] = field(default_factory=list)
    maybe: list[Sent] = field(default_factory=list)


def opt_outs() -> float:
    return sum(
        metrics.REGISTRY.get_sample_value(metrics.P + "opt_outs_total", {"ending": e}) or 0.0
        for e in ENDINGS
    )


class LifecycleModel(RuleBasedStateMachine):
    """Random traffic and pipeline steps against the invariants in the module docstring."""

    def __init__(self, state_url: str | None = None) -> None:
        super().__init__()
        if state_url is None:
            state_url = f"sqlite:///{tempfile.mkdtemp(prefix='model-')}/state.db"
        elif state_url.startswith("redis"):
            with redis.Redis.from_url(state_url) as client:
                client.flushdb()
        self.loop = asyncio.new_event_loop()
        self.wire = Wire()
        self.server = SandboxServer(SandboxConfig(
            rate_limits=False, merge_delay_seconds=0, deletion_delay_seconds=0,
            job_delay_seconds=3600, lists=(SeedList(LIST, "Newsletter"),),
        ))  # fmt: skip
        self.server.app.middlewares.append(self.wire.middleware)
        self.wire.watch = self._watch
        self.overlaps: list[str] = []  # deletions that met other work of their person
        url = self.loop.run_until_complete(self.server.start())
        self.settings = lifecycle_settings(url, state_url, deletion_settle_seconds=SETTLE)
        self.wire.most = self.settings.klaviyo_max_in_flight - 1
        self.topic = Topic(PARTITIONS)
        self.clock = Clock()
        self.letters: list[Letter] = []
        self.replicas: list[Replica] = []
        self.dead: list[str] = []  # fence ids of crashed replicas still counted
        self.replica = self._start_replica()
        self.sent: list[Sent] = []
        self.ids = itertools.count()
        self.base = time.time() - 1800.0  # call times: half an hour ago, rising
        self.tick = 0
        self.opt_outs_before = opt_outs()

    def _start_replica(self) -> Replica:
        replica = Replica(self.settings, self.topic, self.clock, self.letters)
        self.replicas.append(replica)
        self._run(replica.start())
        return replica

    def _run(self, work: Coroutine[Any, Any, Any]) -> Any:
        async def step() -> Any:
            out = await work
            await settle(self.replicas, self.wire, self.server)
            return out

        return self.loop.run_until_complete(step())

    def teardown(self) -> None:
        try:
            self.check()
        finally:
            self.wire.release_all()
            for replica in self.replicas:
                self.loop.run_until_complete(replica.close())
            self.loop.run_until_complete(self.server.stop())
            self.loop.close()

    # publishing -------------------------------------------------------------------------------

    def _publish(
        self, kind: str, fields: dict[str, Any], lag: int, *, person: str | None = None,
        device: str | None = None, ask: tuple[str, str] | None = None,
        at: float | None = None, backfill: bool = False,
    ) -> Sent:  # fmt: skip
        self.tick += 1
        if at is None:
            at = self.base + 2.0 * self.tick - lag + 0.001 * self.tick  # distinct times
        mid = f"m{next(self.ids)}"
        call_type = "track" if kind == "anonymous" else kind
        partition = PEOPLE[person].partition if person else ANONYMOUS_PARTITION
        offset = self.topic.publish(partition, call(call_type, mid, at, **fields), backfill)
        sent = Sent(mid, kind, at, partition, offset, person, device, ask, backfill, fields)
        self.sent.append(sent)
        return sent

    @staticmethod
    def _options(ask: tuple[str, str] | None) -> dict[str, Any]:
        return {"integrations": {"Klaviyo": ASKS[ask]}} if ask else {}

    def _named(self, name: str, device: bool) -> dict[str, Any]:
        person = PEOPLE[name]
        return {"userId": person.user_id, **({"anonymousId": person.device} if device else {})}

    @rule(name=NAMES, by_email=st.booleans(), device=st.booleans(), plan=st.integers(0, 9),
          lag=LAG)  # fmt: skip
    def identify(self, name: str, by_email: bool, device: bool, plan: int, lag: int) -> None:
        """An identify naming the person by userId (with email and phone), or by email alone
        from an app of their own (a second person in the graph until a call names both)."""
        person = PEOPLE[name]
        if by_email:
            traits = {"email": person.email, "plan": plan}
            fields = {"anonymousId": f"app-{name}", "traits": traits}
        else:
            traits = {"email": person.email, "phone": person.phone, "plan": plan}
            fields = {**self._named(name, device), "traits": traits}
        self._publish("identify", fields, lag, person=name,
                      device=person.device if device and not by_email else None)  # fmt: skip

    @rule(name=NAMES, ask=ASK, identify=st.booleans(), device=st.booleans(), lag=LAG)
    def change(
        self, name: str, ask: tuple[str, str], identify: bool, device: bool, lag: int
    ) -> None:
        """A consent or list change asked by an identify (with the person's email and phone)
        or a track (naming the person by userId alone)."""
        person = PEOPLE[name]
        fields = {**self._named(name, device), **self._options(ask)}
        if identify:
            fields["traits"] = {"email": person.email, "phone": person.phone}
        else:
            fields["event"] = "Preferences Saved"
        self._publish("identify" if identify else "track", fields, lag, person=name,
                      device=person.device if device else None, ask=ask)  # fmt: skip

    @rule(name=NAMES, device=st.booleans(), lag=LAG)
    def track(self, name: str, device: bool, lag: int) -> None:
        fields = {**self._named(name, device), "event": "Viewed Product"}
        self._publish("track", fields, lag, person=name,
                      device=PEOPLE[name].device if device else None)  # fmt: skip

    @rule(device=st.sampled_from(["d-shared", "d-carol"]),
          opt_out=st.sampled_from([None, None, "email", "sms"]), lag=LAG)  # fmt: skip
    def anonymous(self, device: str, opt_out: str | None, lag: int) -> None:
        """A call naming only a browser: an event, or an opt-out (carol's own browser)."""
        if opt_out is None:
            fields = {"anonymousId": device, "event": "Viewed Page"}
            self._publish("anonymous", fields, lag, device=device)
            return
        ask = ("unsubscribe", opt_out)
        fields = {"anonymousId": "d-carol", "event": "Opted Out", **self._options(ask)}
        self._publish("anonymous", fields, lag, device="d-carol", ask=ask)

    @rule(data=st.data(), device=st.booleans(), email=st.booleans(), lag=LAG)
    def delete(self, data: st.DataObject, device: bool, email: bool, lag: int) -> None:
        """A delete call naming the person by userId (and their browser, as SDKs attach it),
        mostly someone active lately; it names their email too if they ever called by email
        alone (the graph need not know that email is theirs)."""
        recent = [s.person for s in self.sent[-3:] if s.person]
        name = data.draw(st.sampled_from(recent) if recent else NAMES)
        person = PEOPLE[name]
        email = email or any(s.person == name and "userId" not in s.fields for s in self.sent)
        fields = self._named(name, device) | ({"traits": {"email": person.email}} if email else {})
        self._publish("delete", fields, lag, person=name,
                      device=person.device if device else None)  # fmt: skip

    @precondition(lambda self: any(s.person and s.kind != "delete" for s in self.sent))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """An earlier call published again as a backfill (its own time, a new messageId)."""
        earlier = [s for s in self.sent if s.person and s.kind != "delete"]
        old = data.draw(st.sampled_from(earlier))
        self._publish(old.kind, dict(old.fields), 0, person=old.person, device=old.device,
                      ask=old.ask, at=old.at, backfill=True)  # fmt: skip

    # the pipeline -----------------------------------------------------------------------------

    @rule(partition=st.integers(0, PARTITIONS - 1), count=st.integers(1, 4))
    def fetch(self, partition: int, count: int) -> None:
        self._run(self.replica.fetch(partition, count))

    @rule()
    def catch_up(self) -> None:
        """The service reads everything published and sends what each lane holds, once."""
        replica = self.replica
        for partition in range(PARTITIONS):
            while replica.positions[partition] < len(self.topic.logs.get(partition, [])):
                self._run(replica.fetch(partition, 10))
        self._send_each()

    def _send_each(self) -> None:
        self.replica.beat()
        for kind in KINDS:
            self.replica.send(kind)
        self._run(asyncio.sleep(0))

    @precondition(lambda self: any(lane.items for lane in self.replica.lanes().values()))
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        kinds = [k for k, lane in self.replica.lanes().items() if lane.items]
        self.replica.send(data.draw(st.sampled_from(sorted(kinds))))
        self._run(asyncio.sleep(0))

    @rule(count=st.integers(1, 3))
    def klaviyo_stalls(self, count: int) -> None:
        """The next requests stay on the wire until answered, one by one in any order, or
        until the pipeline is drained (a request may take longer than the settle time)."""
        self.wire.stalls += count

    @precondition(lambda self: bool(self.wire.held))
    @rule(data=st.data())
    def klaviyo_answers(self, data: st.DataObject) -> None:
        self.wire.release(data.draw(st.integers(0, len(self.wire.held) - 1)))
        self._run(asyncio.sleep(0))

    @rule()
    def time_passes(self) -> None:
        """The settle time passes: Klaviyo applied the jobs it took (its delay is shorter),
        not the requests still on the wire (a request may take longer); the service sends
        what became due."""
        self.server.sandbox.job_queue.flush()
        self.clock.advance(SETTLE)
        self._send_each()

    @rule()
    def commit(self) -> None:
        self.replica.commit()

    @rule(partition=st.integers(0, PARTITIONS - 1))
    def revoke(self, partition: int) -> None:
        self.replica.revoke(partition)
        self._run(asyncio.sleep(0))

    @rule()
    def crash(self) -> None:
        self.replica.crash()
        self.wire.orphan_all()
        self.dead.append(self.replica.fence_id)
        self.replica = self._start_replica()

    @precondition(lambda self: bool(self.dead))
    @rule()
    def dead_replicas_run_out(self) -> None:
        """The crashed replicas' liveness and request timeout pass: what they had on the wire
        landed (answered now), and they count no longer."""
        self._expire_dead()

    def _expire_dead(self) -> None:
        for held in list(self.wire.held):
            if held.orphan:
                self.wire.release(self.wire.held.index(held))
        self._run(asyncio.sleep(0))
        gone = self.settings.replica_liveness_seconds + self.settings.klaviyo_timeout_seconds
        for replica in self.dead:
            self.replica.store.publish_mark(replica, 0, -(gone + 1.0))
        self.dead.clear()

    # the wire ---------------------------------------------------------------------------------

    def _watch(self, arrived: Held, on_the_wire: list[Held]) -> None:
        """A deletion never meets another request naming the profile it deletes on the wire:
        older work is answered before it leaves, newer work waits until it is done (either
        could make the profile again after it, or be deleted with it). Another deletion of the
        person (a crashed replica's, still on the wire) makes nothing again: it may.

        The profile it deletes is what its identifiers name at Klaviyo, not everything the
        model knows of the person: an email the person called by alone (`identify` by email)
        is another person in the graph until a call names both, so a delete call naming their
        userId rightly neither erases it nor waits for its work."""
        if arrived.method != "POST" or arrived.path.rstrip("/") != DELETION:
            return
        who = orjson.loads(arrived.body)["data"]["attributes"]["profile"]["data"]
        named = self._named_in(who.get("id")) | set(who["attributes"].values())
        named |= self._holders(named)
        names = [n for n, p in PEOPLE.items() if named & {p.user_id, p.email, p.phone}]
        for held in on_the_wire:
            if held.path.rstrip("/") == DELETION:
                continue
            if self._named_in(None, held.body) & named:
                self.overlaps.append(f"{'/'.join(names)}'s deletion met {held.method} {held.path}")

    def _holders(self, values: set[str]) -> set[str]:
        """The identifiers of the live sandbox profiles holding any of `values`."""
        store = self.server.store
        out: set[str] = set()
        for value in values:
            for attribute in ("email", "phone_number", "external_id"):
                owner = store.owner(attribute, value)
                if owner is not None:
                    out |= {v for v in store.profiles[owner].attributes.values()
                            if isinstance(v, str)}  # fmt: skip
        return out

    def _named_in(self, profile_id: str | None, body: bytes = b"") -> set[str]:
        """Identifier values a request names: the strings of its body, and the identifiers of
        the sandbox profiles it names by id."""
        texts = set(_strings(orjson.loads(body))) if body else set()
        if profile_id:
            texts.add(profile_id)
        found = set(texts)
        for text in texts:
            live = self.server.store.canonical_id(text)
            if live is not None:
                found |= {v for v in self.server.store.profiles[live].attributes.values()
                          if isinstance(v, str)}  # fmt: skip
        return found

    # quiescence and the invariants --------------------------------------------------------------

    def quiesce(self) -> None:
        """Read every record, answer everything, let time pass until nothing waits."""
        self.wire.release_all()
        self._run(asyncio.sleep(0))
        self._expire_dead()
        replica = self.replica
        for partition in range(PARTITIONS):
            while replica.positions[partition] < len(self.topic.logs.get(partition, [])):
                self._run(replica.fetch(partition, 10))
        self._run(run_dry(replica, self.replicas, self.wire, self.server, self.clock))

    @precondition(lambda self: len(self.sent) > 0)
    @rule()
    def check(self) -> None:
        self.quiesce()
        assert not self.overlaps, self.overlaps
        klaviyo = Klaviyo(self.server)
        assert not self.replica.store.open_erasures(), "a deletion never confirmed"
        letters = {letter.message_id for letter in self.letters}
        assert all(letter.reason.strip() for letter in self.letters)
        for name, person in PEOPLE.items():
            lives = self.lives(name)
            self.deleted_person_is_gone(name, person, lives, klaviyo)
            self.latest_consent_holds(name, person, lives, klaviyo, letters)
            self.latest_traits_hold(name, person, lives, klaviyo)
        self.nobody_else_is_touched(klaviyo)
        self.no_opt_out_is_dropped(klaviyo, letters)

    def lives(self, name: str) -> list[Life]:
        """The person's named calls in Kafka order, split at each delete call; a backfilled
        call older than a deletion before it is dropped (not in any life): judged by call time,
        against the latest time of any (one tombstone per identifier keeps it, even when a
        later delete call's clock runs behind)."""
        lives = [Life()]
        mine = sorted((s for s in self.sent if s.person == name), key=lambda s: s.offset)
        latest = float("-inf")  # the latest time of any deletion so far: its tombstone's
        for sent in mine:
            if sent.kind == "delete":
                latest = max(latest, sent.at)
                maybe = [s for s in mine
                         if s.backfill and s.offset < sent.offset and s.at > sent.at]  # fmt: skip
                lives.append(Life(sent, maybe=maybe))
                continue
            life = lives[-1]
            if sent.backfill and life.deletion is not None and sent.at < latest:
                continue
            life.calls.append(sent)
        return lives

    def deleted_person_is_gone(
        self, name: str, person: Person, lives: list[Life], klaviyo: Klaviyo
    ) -> None:
        life = lives[-1]
        if life.deletion is not None and not life.calls and not life.maybe:
            found = klaviyo.holding(person)
            assert not found, f"{name} was deleted but Klaviyo holds {found}"
            COVERAGE["deleted: no profile"] += 1
        events = {s.mid for s in self.sent if s.person == name and s.kind == "track"}
        stale = events - {s.mid for s in life.calls + life.maybe}  # before the deletion
        for profile in klaviyo.holding(person):
            back = stale & set(klaviyo.events_of(profile["id"]))
            assert not back, f"events from before {name}'s deletion came back: {back}"
            if life.deletion is not None and stale:
                COVERAGE["came back: no event from before"] += 1

    def latest_consent_holds(
        self, name: str, person: Person, lives: list[Life], klaviyo: Klaviyo, letters: set[str]
    ) -> None:
        life = lives[-1]
        since = life.deletion.at if life.deletion is not None else float("-inf")
        if len(klaviyo.holding(person)) > 1:  # two graph persons (by userId, by email) so far
            COVERAGE["consent: person in two profiles"] += 1
            return
        for channel in ("email", "sms", LIST):
            asked = [s for s in life.calls if s.ask and s.ask[1] == channel]
            latest = max(asked, key=lambda s: s.at, default=None)
            newest = latest.at if latest is not None else since
            if name == "carol" and any(
                s.kind == "anonymous" and s.ask and s.ask[1] == channel
                and (s.at > newest or not self._erased_browser(lives))
                for s in self.sent
            ):  # fmt: skip
                continue  # an anonymous opt-out may or may not have met carol
            if any(s.ask and s.ask[1] == channel for s in life.maybe):
                continue
            if latest is not None and (
                latest.mid in letters or latest.backfill and latest.ask == ("subscribe", channel)
            ):
                continue
            verb = latest.ask[0] if latest is not None and latest.ask else None
            holds = klaviyo.consent(person, channel)
            held = "held" if holds else "no profile"
            COVERAGE[f"latest {verb or 'nothing'} {channel}: {held}"] += 1
            assert _agrees(verb, holds), (
                f"{name} {channel}: the latest change is {verb or 'none'}"
                f" ({latest.mid if latest else '-'}), Klaviyo holds {holds}"
            )

    def _erased_browser(self, lives: list[Life]) -> bool:
        """Whether the deletion starting the last life erased carol's browser: its delete call
        named it, or a call of hers since the deletion before it did (an earlier deletion
        took her browser with it; a call naming it since is what made it hers again). If not,
        her browser's anonymous calls older than the deletion (and newer than the one that last
        erased the browser) still go to whoever names the browser next (her comeback
        included: nothing tells them from hers)."""
        life = lives[-1]
        deletion = life.deletion
        if deletion is None:
            return False
        return deletion.device is not None or any(s.device for s in lives[-2].calls)

    def latest_traits_hold(
        self, name: str, person: Person, lives: list[Life], klaviyo: Klaviyo
    ) -> None:
        """The profile holds the latest `plan` by call time since the last deletion (every
        upsert carries the person's traits merged by call time, so an older snapshot landing
        after a newer one would show)."""
        life = lives[-1]
        plans = [s for s in life.calls if "plan" in s.fields.get("traits", {})]
        if not plans or any("plan" in s.fields.get("traits", {}) for s in life.maybe):
            return
        latest = max(plans, key=lambda s: s.at)
        if len(klaviyo.holding(person)) > 1:
            return
        profile = klaviyo.by_email(person.email)
        held = profile["properties"].get("plan") if profile else None
        COVERAGE["latest plan: " + ("held" if profile else "no profile")] += 1
        assert held == latest.fields["traits"]["plan"], (
            f"{name}'s plan is {held}, the latest identify ({latest.mid}) says"
            f" {latest.fields['traits']['plan']}"
        )

    def nobody_else_is_touched(self, klaviyo: Klaviyo) -> None:
        deleted = {name for name in PEOPLE if any(
            s.person == name and s.kind == "delete" for s in self.sent
        )}  # fmt: skip
        for gone in klaviyo.deleted():
            owners = {name for name, p in PEOPLE.items() for value in gone.values()
                      if value in (p.user_id, p.email, p.phone)}  # fmt: skip
            assert owners <= deleted, f"a deletion removed {owners - deleted}'s profile"
            COVERAGE["deleted at Klaviyo: a deleted person's"] += 1
        for name, person in PEOPLE.items():
            if name in deleted or not any(
                s.person == name and s.kind == "identify" and "userId" in s.fields
                for s in self.sent
            ):
                continue
            profiles = klaviyo.holding(person)
            whole = [p for p in profiles if p["attributes"]["external_id"] == person.user_id
                     and p["attributes"]["email"] == person.email]  # fmt: skip
            assert whole, f"{name}'s profile lost its identifiers: {profiles}"
            COVERAGE["never deleted: profile whole"] += 1

    def no_opt_out_is_dropped(self, klaviyo: Klaviyo, letters: set[str]) -> None:
        unsubscribes = [s for s in self.sent if s.ask and s.ask[0] == "unsubscribe"]
        for u in unsubscribes:
            assert u.ask is not None
            owner = u.person or "carol"
            newer = any(
                s.ask and s.ask[1] == u.ask[1] and s.at > u.at and (s.person or "carol") == owner
                for s in self.sent
            )
            if u.person is None:  # anonymous: its person may have been deleted any time
                deleted = any(s.person == owner and s.kind == "delete" for s in self.sent)
            else:  # erased by a later deletion, or older than the one before it
                lives = self.lives(owner)
                deleted = all(u not in life.calls for life in lives) or any(
                    s.person == owner and s.kind == "delete" and s.offset > u.offset
                    for s in self.sent
                )
            if u.mid in letters or newer or deleted:
                COVERAGE["opt-out: " + ("dead letter" if u.mid in letters else
                                        "newer call" if newer else "person deleted")] += 1
                continue
            COVERAGE["opt-out: sent"] += 1
            holds = klaviyo.consent(PEOPLE[owner], u.ask[1])
            assert _agrees("unsubscribe", holds), f"{u.mid} ({owner} {u.ask[1]}) dropped: {holds}"
        counted = opt_outs() - self.opt_outs_before
        assert counted >= len(unsubscribes), (
            f"{len(unsubscribes)} unsubscribes, {counted} counted by their ending"
        )


def _agrees(verb: str | None, holds: Holds | None) -> bool:
    """Whether what Klaviyo holds for a channel is what its latest change (`verb`, None:
    nothing asked) leaves there."""
    if holds is None:  # no profile holds the identifier
        return verb is None or verb == "unsuppress"
    state, reasons = holds
    if verb is None:
        return state in ("never", "not member") and not reasons
    return {
        "subscribe": state == "subscribed" and not reasons & {"UNSUBSCRIBE", "USER_SUPPRESSED"},
        "unsubscribe": state == "unsubscribed",
        "suppress": "USER_SUPPRESSED" in reasons,
        "unsuppress": "USER_SUPPRESSED" not in reasons,
        "add": state == "member",
        "remove": state == "not member",
    }[verb]


Holds = tuple[str, frozenset[str]]


def _strings(value: Any) -> list[str]:
    """Every string in a JSON document."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


class Klaviyo:
    """What the sandbox holds, read in process (the same documents /sandbox/ serves)."""

    def __init__(self, server: SandboxServer) -> None:
        store = server.store
        self._store = store
        on = {pid: [m.id for m in store.lists.values() if pid in m.members]
              for pid in store.profiles}  # fmt: skip
        self.profiles = [profile_snapshot(p, on[p.id]) for p in store.profiles.values()]

    def holding(self, person: Person) -> list[dict[str, Any]]:
        """Live profiles holding any of the person's identifiers."""
        mine = (person.user_id, person.email, person.phone)
        return [p for p in self.profiles if any(
            p["attributes"].get(k) in mine for k in ("external_id", "email", "phone_number")
        )]  # fmt: skip

    def by_email(self, email: str) -> dict[str, Any] | None:
        return self._by("email", email)

    def _by(self, attribute: str, value: str) -> dict[str, Any] | None:
        found = [p for p in self.profiles if p["attributes"].get(attribute) == value]
        assert len(found) <= 1, f"two profiles hold {attribute} {value}"
        return found[0] if found else None

    def consent(self, person: Person, channel: str) -> Holds | None:
        """What Klaviyo holds for the person's channel (None: no profile): the consent state
        (never, subscribed, unsubscribed; a list: member or not member) and, for email, the
        reasons of its global suppressions."""
        if channel == "sms":
            profile = self._by("phone_number", person.phone)
            if profile is None:
                return None
            return profile["consent"]["sms.marketing"]["state"], frozenset()
        if channel == LIST:  # the profile the membership went to: by the strongest identifier
            profile = (self._by("email", person.email) or self._by("phone_number", person.phone)
                       or self._by("external_id", person.user_id))  # fmt: skip
            if profile is None:
                return None
            return ("member" if LIST in profile["lists"] else "not member"), frozenset()
        profile = self._by("email", person.email)
        if profile is None:
            return None
        if False:
            return ("member" if LIST in profile["lists"] else "not member"), frozenset()
        reasons = frozenset(s["reason"] for s in profile["suppressions"] if s["list_id"] is None)
        return profile["consent"]["email.marketing"]["state"], reasons

    def events_of(self, profile_id: str) -> list[str]:
        return [e.unique_id for e in self._store.events if e.profile_id == profile_id]

    def deleted(self) -> list[dict[str, Any]]:
        return [dict(d.identifiers) for d in self._store.deleted]


TestLifecycleModelSqlite = LifecycleModel.TestCase


def test_lifecycle_model_on_redis(clean_redis_url: str) -> None:
    run_state_machine_as_test(lambda: LifecycleModel(clean_redis_url))
