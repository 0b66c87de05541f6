"""Waiting out a dependency: retried until it answers, and a stop ends the wait at once."""

from __future__ import annotations

import asyncio

import pytest

from stream.core.errors import Interrupted, StateError
from stream.core.retry import RetryPolicy, until_available

SLOW = RetryPolicy(base_seconds=3600, max_delay_seconds=3600)  # a wait nothing but a stop ends
QUICK = RetryPolicy(base_seconds=0.001, max_delay_seconds=0.002)


async def test_a_dependency_is_asked_again_until_it_answers() -> None:
    answers = iter([StateError("down"), StateError("down"), "up"])
    heard: list[str | None] = []

    def ask() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await until_available(ask, "state store", QUICK, waiting=heard.append) == "up"
    assert heard == ["state store", "state store", None]


async def test_a_stop_during_the_wait_ends_it_with_interrupted() -> None:
    stop = asyncio.Event()
    attempts = 0

    async def down() -> None:
        nonlocal attempts
        attempts += 1
        asyncio.get_running_loop().call_soon(stop.set)  # the signal comes during the wait
        raise StateError("down")

    with pytest.raises(Interrupted, match="state store"):
        await asyncio.wait_for(until_available(down, "state store", SLOW, stop=stop), 30)
    assert attempts == 1


async def test_once_stopping_a_failure_is_not_waited_on_but_an_answer_is_taken() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await until_available(lambda: 7, "schema registry", SLOW, stop=stop) == 7

    def down() -> None:
        raise StateError("down")

    with pytest.raises(Interrupted, match="schema registry"):
        await asyncio.wait_for(until_available(down, "schema registry", SLOW, stop=stop), 30)
