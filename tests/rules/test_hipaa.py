"""HIPAA policy: only allow-listed keys survive; context, IPs and free text never do."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.rules.hipaa import HipaaConfigError, HipaaPolicy, load_policy, redacted_record
from stream.rules.transform import Transformer
from tests.support.destination import call, write_yaml

POLICY = HipaaPolicy(
    allowed_properties=frozenset({"order_id", "client_ip"}),
    allowed_traits=frozenset({"email"}),
    allowed_context=frozenset({"locale"}),
)


def test_only_allow_listed_properties_traits_and_context_remain() -> None:
    track = call(
        "track",
        userId="u",
        event="Order Completed",
        properties={"order_id": "o1", "diagnosis": "flu", "client_ip": "10.1.2.3"},
        context={
            "ip": "203.0.113.9",
            "userAgent": "Mozilla",
            "locale": "en-US",
            "page": {"url": "https://x/cardiology"},
            "traits": {"email": "a@x.io", "ssn": "123-45-6789"},
        },
    )
    out = POLICY.apply(track)
    assert out.properties == {"order_id": "o1"}  # an IP is dropped even under an allowed key
    assert out.context == {"locale": "en-US", "traits": {"email": "a@x.io"}}
    identify = call("identify", userId="u", traits={"email": "a@x.io", "dob": "1970-01-01"})
    assert POLICY.apply(identify).traits == {"email": "a@x.io"}


def test_hipaa_runs_after_the_rules_so_a_hashed_copy_can_be_allowed(tmp_path: Path) -> None:
    from stream.rules.transform import load_transformations

    rules = write_yaml(
        tmp_path,
        "t.yaml",
        {"transformations": [{"rules": [{"hash": {"field": "traits.email", "to": "traits.eh"}}]}]},
    )
    policy = HipaaPolicy(allowed_traits=frozenset({"eh"}))
    out = Transformer(load_transformations(rules), policy)(
        call("identify", userId="u", traits={"email": "a@x.io"})
    )
    assert set(out.traits) == {"eh"}


def test_redacted_record_holds_only_the_filtered_call() -> None:
    out = POLICY.apply(call("track", userId="u", event="E", properties={"x": "secret"}))
    document = orjson.loads(redacted_record(out))
    assert document["event"] == "E"
    assert "secret" not in redacted_record(out).decode()


def test_policy_file_errors_name_the_field(tmp_path: Path) -> None:
    assert load_policy(None) == HipaaPolicy()
    bad = write_yaml(tmp_path, "h.yaml", {"allowed_context": ["ip"]})
    with pytest.raises(HipaaConfigError, match=r"h.yaml: field 'allowed_context'"):
        load_policy(bad)
    bad = write_yaml(tmp_path, "h2.yaml", {"allowed_traits": "email"})
    with pytest.raises(HipaaConfigError, match=r"h2.yaml: field 'allowed_traits'"):
        load_policy(bad)
