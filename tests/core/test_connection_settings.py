"""Connection modes: key formats are checked at start with a clear message, never echoing a key."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from stream.core.clients import require_klaviyo_credentials
from stream.core.errors import ConfigError
from stream.core.settings import Settings, load_settings

PRIVATE = "pk_0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("key", "says"),
    [("abc", "6 letters or digits"), ("AbC-12", "6 letters or digits"), (PRIVATE, "private key")],
)
def test_a_wrong_public_key_is_refused_by_name_without_echoing_it(key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(klaviyo_public_key=key)
    message = str(info.value)
    assert message.startswith("KLAVIYO_PUBLIC_KEY:") and says in message
    assert key not in message


def test_a_private_key_must_start_with_pk() -> None:
    with pytest.raises(ConfigError, match="KLAVIYO_API_KEY: .*starts with 'pk_'"):
        load_settings(klaviyo_api_key="sk_live_123")


def test_each_mode_requires_its_own_key() -> None:
    require_klaviyo_credentials(Settings(klaviyo_api_key=SecretStr(PRIVATE)))
    require_klaviyo_credentials(Settings(klaviyo_mode="client", klaviyo_public_key="AbC123"))
    with pytest.raises(ConfigError, match="KLAVIYO_PUBLIC_KEY: not set"):
        require_klaviyo_credentials(Settings(klaviyo_mode="client"))
    with pytest.raises(ConfigError, match="KLAVIYO_API_KEY: not set"):
        require_klaviyo_credentials(Settings())
