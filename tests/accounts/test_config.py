"""The accounts file: what it may say, what each account inherits, and one line per mistake
naming the file, the account and the field, never a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stream.accounts.config import (
    DEFAULT_ACCOUNT,
    MAX_ACCOUNTS,
    KeyRef,
    implicit_accounts,
    load_accounts,
    read_accounts_file,
)
from stream.core.clients import masked_settings
from stream.core.errors import AccountsConfigError, ConfigError
from stream.core.settings import Settings, load_settings
from tests.support.destination import write_yaml

SECRET = "pk_live_" + "S3cr3t" * 5
KEYS = {"KEY_A": "pk_key_a_" + "1" * 20, "KEY_B": "pk_key_b_" + "2" * 20}
TOPICS = "analytics,brand-a,brand-b"


def settings_for(path: str | None, **values: Any) -> Settings:
    return Settings(kafka_topics=TOPICS, accounts_file=path, **values)


def two(**extra_b: Any) -> dict[str, Any]:
    return {
        "accounts": [
            {"name": "brand-a", "key": {"env": "KEY_A"}, "topics": ["brand-a"]},
            {"name": "brand-b", "key": "env:KEY_B", "topics": ["brand-b"], **extra_b},
        ]
    }


def test_without_a_file_the_service_is_one_implicit_account_of_todays_settings() -> None:
    settings = Settings(
        klaviyo_api_key="pk_today_" + "0" * 20, klaviyo_rate_share="1/4", hipaa_mode=True
    )
    accounts = load_accounts(settings, environ={})
    assert accounts.implicit and accounts.names == (DEFAULT_ACCOUNT,)
    only = accounts[DEFAULT_ACCOUNT]
    assert only.keeps_state and only.rules is None
    own = only.settings(settings, environ={})
    assert own == settings  # every builder sees exactly today's settings


def test_the_example_file_loads_and_each_account_inherits_what_it_leaves_out(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "brand-eu.key"
    secret.write_text(KEYS["KEY_B"] + "\n")
    text = Path("examples/accounts.yaml").read_text().replace("/run/secrets/klaviyo-brand-eu",
                                                               str(secret))  # fmt: skip
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    base = Settings(
        kafka_topics="analytics,analytics-us",
        accounts_file=str(path),
        transformations_file="examples/transformations.yaml",
        klaviyo_rate_share=0.5,
    )
    environ = {
        "KLAVIYO_KEY_BRAND_US": "pk_us_" + "3" * 20,
        "KLAVIYO_KEY_ACME": "pk_acme_" + "4" * 20,
        "KLAVIYO_KEY_GROUP": "pk_group_" + "5" * 20,
    }
    accounts = load_accounts(base, environ)
    assert accounts.names == ("brand-us", "brand-eu", "acme", "group-reporting")
    assert [a.keeps_state for a in accounts] == [True, False, False, False]
    us, eu, acme, group = (accounts[name].settings(base, environ) for name in accounts.names)
    assert us.klaviyo_rate_share == "auto" and group.klaviyo_rate_share == 0.5
    assert acme.klaviyo_rate_share == 0.5  # the global share, left out
    assert eu.klaviyo_revision == "2026-04-15" and acme.klaviyo_revision == base.klaviyo_revision
    assert eu.klaviyo_api_key is not None
    assert eu.klaviyo_api_key.get_secret_value() == KEYS["KEY_B"]  # read from the file, stripped
    assert eu.transformations_file is None  # `none`: not the global file
    assert acme.transformations_file == "examples/transformations.yaml"
    assert eu.consent_file == "examples/consent.yaml" and acme.consent_file is None
    assert acme.hipaa_mode and not us.hipaa_mode
    assert accounts["group-reporting"].fan_out and not accounts["acme"].fan_out
    assert environ["KLAVIYO_KEY_ACME"] not in repr(acme) + str(masked_settings(acme))
    assert str(accounts["brand-eu"].key) == f"file:{secret}"  # a reference is shown, not a key


def test_the_setting_reads_the_file_named_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml(tmp_path, "accounts.yaml", two())
    monkeypatch.setenv("ACCOUNTS_FILE", path)
    monkeypatch.setenv("KAFKA_TOPICS", TOPICS)
    for name, key in KEYS.items():
        monkeypatch.setenv(name, key)
    accounts = load_accounts(load_settings())
    assert accounts.names == ("brand-a", "brand-b") and not accounts.implicit
    assert accounts.unmatched == "filter" and accounts.deletes == "every-account"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"accounts": []}, "field 'accounts': must be a non-empty list"),
        ({"accounts": [{"name": "a"}], "routes": 1}, "unknown field(s) ['routes']"),
        (two(colour="red"), "accounts[1] (brand-b): unknown field(s) ['colour']"),
        ({"accounts": [{"name": "Brand_A", "key": "env:K"}]}, "field 'name': must be 1 to 63"),
        ({"accounts": [two()["accounts"][0]] * 2}, "account brand-a is named twice"),
        (two(key=SECRET), "accounts[1] (brand-b): field 'key': must name where the key is"),
        (two(key={"vault": "x"}), "field 'key': must name where the key is"),
        (two(key={"env": "not a name"}), "field 'key': env: must be an environment variable"),
        (two(topics=["nowhere"]), "field 'topics': nowhere not in KAFKA_TOPICS"),
        (two(topics=None, match="some"), "field 'match': must be all or a non-empty list"),
        (two(match="all"), "give either match: or topics on the account, not both"),
        ({"accounts": [{"name": "a", "key": "env:K"}]}, "says no records are its own"),
        (two(field="groupId", equals="x"), "field 'field': must look like context.<key>"),
        (two(field="context.groupId"), "field 'equals': the values of context.groupId"),
        (two(field="context.a", equals=[True]), "field 'equals': must be one or a list of str"),
        (two(header=[]), "field 'header': must be one or a list of names"),
        (two(**{"rate-share": 2}), "field 'rate-share': a share is more than 0 and at most 1"),
        (two(revision="July"), "field 'revision': 'July' is not a revision"),
        (two(mode="client"), "field 'public-key': client mode needs the public key"),
        (two(**{"public-key": "pk_abcdef"}), "field 'public-key': this is a private key"),
        (two(consent="no/such/file.yaml"), "field 'consent': no such file: no/such/file.yaml"),
        (two(hipaa="yes"), "field 'hipaa': must be true or false"),
        (two(fan_out=True, **{"fan-out": False}), "field 'fan-out' is given twice"),
        ({**two(), "unmatched": "drop"}, "field 'unmatched': must be one of filter, dead-letter"),
        ({**two(), "existing-state": "brand-z"}, "'brand-z' is not an account of this file"),
        ({"accounts": [{"name": f"a{i}", "key": "env:K", "match": "all"}
                       for i in range(MAX_ACCOUNTS + 1)]}, f"at most {MAX_ACCOUNTS}"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_the_file_account_and_field(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    path = write_yaml(tmp_path, "accounts.yaml", document)
    with pytest.raises(AccountsConfigError) as caught:
        load_accounts(settings_for(path), KEYS)
    text = str(caught.value)
    assert text.startswith(f"ACCOUNTS_FILE: {path}: "), text
    assert message in text and "\n" not in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KEY_A": KEYS["KEY_A"]}, "account brand-b: key: environment variable KEY_B is not set"),
        ({**KEYS, "KEY_B": "sk_" + SECRET}, "account brand-b: key: env:KEY_B does not hold a priv"),
        ({**KEYS, "KEY_B": KEYS["KEY_A"]}, "accounts brand-a and brand-b have the same key"),
    ],
)
def test_keys_are_read_at_start_and_never_shown(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    path = write_yaml(tmp_path, "accounts.yaml", two())
    with pytest.raises(AccountsConfigError, match="^ACCOUNTS_FILE: ") as caught:
        load_accounts(settings_for(path), environ)
    assert message in str(caught.value)
    assert all(key not in str(caught.value) for key in environ.values())


def test_a_key_file_that_cannot_be_read_names_the_file_not_its_content(tmp_path: Path) -> None:
    missing = KeyRef("file", str(tmp_path / "nothing"))
    with pytest.raises(AccountsConfigError, match="cannot read file .*nothing"):
        missing.resolve()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(AccountsConfigError, match="is empty"):
        KeyRef("file", str(empty)).resolve()
    secret = tmp_path / "key"
    secret.write_text(" " + KEYS["KEY_A"] + " \n")
    assert KeyRef("file", str(secret)).resolve() == SecretStr(KEYS["KEY_A"])


def test_a_client_mode_account_needs_no_private_key_and_its_public_key_is_its_own(
    tmp_path: Path,
) -> None:
    document = two(mode="client", key=None, **{"public-key": "AbC123"})
    path = write_yaml(tmp_path, "accounts.yaml", document)
    base = settings_for(path, klaviyo_mode="server")
    accounts = load_accounts(base, KEYS)
    own = accounts["brand-b"].settings(base, KEYS)
    assert own.klaviyo_mode == "client" and own.klaviyo_public_key == "AbC123"
    assert own.klaviyo_api_key is None
    doubled = two(mode="client", **{"public-key": "AbC123"})
    doubled["accounts"][0].update({"mode": "client", "public-key": "AbC123"})
    with pytest.raises(AccountsConfigError, match="two accounts have the same public-key"):
        read_accounts_file(write_yaml(tmp_path, "twice.yaml", doubled), base)


def test_an_account_named_default_keeps_the_existing_state_unless_the_file_names_another(
    tmp_path: Path,
) -> None:
    document = two()
    document["accounts"][0]["name"] = "default"
    accounts = read_accounts_file(write_yaml(tmp_path, "a.yaml", document), settings_for(None))
    assert [a.keeps_state for a in accounts] == [True, False]
    document["existing-state"] = "brand-b"
    accounts = read_accounts_file(write_yaml(tmp_path, "b.yaml", document), settings_for(None))
    assert [a.keeps_state for a in accounts] == [False, True]
    none = read_accounts_file(write_yaml(tmp_path, "c.yaml", two()), settings_for(None))
    assert [a.keeps_state for a in none] == [False, False]


def test_topics_of_an_account_is_where_its_records_come_from(tmp_path: Path) -> None:
    document = two(topics=None, match=[{"topics": ["brand-b"]}, {"header": True}])
    accounts = read_accounts_file(write_yaml(tmp_path, "a.yaml", document), settings_for(None))
    every = ("analytics", "brand-a", "brand-b")
    assert accounts.topics_of("brand-a", every) == {"brand-a"}
    assert accounts.topics_of("brand-b", every) == set(every)  # a header may come on any topic
    with pytest.raises(ConfigError, match="no account named 'brand-z'"):
        accounts.topics_of("brand-z", every)
    assert implicit_accounts(settings_for(None)).topics_of(DEFAULT_ACCOUNT, every) == set(every)
