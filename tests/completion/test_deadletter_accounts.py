"""Dead letters of one account's copy of a record: redacted as that account's HIPAA mode says,
or as the HIPAA account's when the record also went to one (a fan-out spanning HIPAA and
other accounts), and naming their account."""

from __future__ import annotations

from stream.completion.deadletter import DeadLetter
from stream.core.calls import Record
from stream.core.errors import MappingError
from stream.engine.pipeline import build_dead_letters
from stream.intake.decode import make_decoder
from stream.rules.transform import transformer_from_settings
from tests.support.inprocess import offline_settings


def test_each_accounts_dead_letters_are_redacted_as_its_hipaa_mode_says() -> None:
    settings = offline_settings()
    hipaa = settings.model_copy(update={"hipaa_mode": True})
    letters = build_dead_letters(
        settings, make_decoder(settings), transformer_from_settings(settings),
        {"brand": (settings, transformer_from_settings(settings)),
         "clinic": (hipaa, transformer_from_settings(hipaa))},
    )  # fmt: skip
    try:
        assert letters.redactor_of(Record("t", 0, 0)) is None  # no account: the global mode
        assert letters.redactor_of(Record("t", 0, 0, account="brand")) is None
        assert letters.redactor_of(Record("t", 0, 0, account="clinic")) is not None
        spanning = Record("t", 0, 0, account="brand", redact_as="clinic")
        assert letters.redactor_of(spanning) is not None
        headers = dict(DeadLetter(spanning, MappingError("bad"), "map").headers())
        assert headers["dlq.account"] == b"brand"
    finally:
        letters.close(timeout=0)
