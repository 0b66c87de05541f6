"""Pytest plugin: one real redis-server per session on a free loopback port.

`redis_url` (session) starts `redis-server` without persistence in a temp dir and waits for PING;
`clean_redis_url` (function) is the same URL after FLUSHDB, so each test starts empty.
`redis_password_url` (session) is a second server that requires a password (`requirepass`):
`redis://:PASSWORD@127.0.0.1:PORT/0`, with `REDIS_PASSWORD` the password tests look for.
Set REDIS_SERVER to use another binary; without one the Redis tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import free_port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    """Poll PING until it answers, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
                if client.ping():
                    return True
        except redis.ConnectionError:
            time.sleep(0.02)
    return False


REDIS_PASSWORD = "Redis-Pa55-" + "x7Q"  # distinctive: a test greps output for it


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a session-wide redis-server started for the tests (db 0)."""
    yield from _redis_server(tmp_path_factory, password=None)


@pytest.fixture(scope="session")
def redis_password_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (with the password) of a session-wide redis-server that requires REDIS_PASSWORD."""
    yield from _redis_server(tmp_path_factory, password=REDIS_PASSWORD)


def _redis_server(
    tmp_path_factory: pytest.TempPathFactory, password: str | None
) -> Iterator[str]:
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    auth = ["--requirepass", password] if password else []
    for _attempt in range(3):  # the free port can be taken between probe and bind
        port = free_port()
        log = open(workdir / f"redis-{port}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                *auth,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"
        if _wait_ready(url, proc):
            break
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    else:
        pytest.fail(f"redis-server did not start; logs in {workdir}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """The session Redis URL, with its database flushed before the test."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url


class StoppableRedis:
    """A redis-server of one test that can be stopped and started again on the same port,
    its data kept on disk (append-only file): a state-store outage, and the recovery."""

    def __init__(self, workdir: Path) -> None:
        binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            pytest.skip("redis-server not installed (apt-get install -y redis-server)")
        self._binary = binary
        self._workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self._workdir / "redis.log", "ab") as log:
            self._spawn(log)

    def _spawn(self, log: Any) -> None:
        self._proc = subprocess.Popen(
            [
                self._binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self._workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if not _wait_ready(self.url, self._proc):
            raise RuntimeError(f"redis-server did not start on {self.port}; see {self._workdir}")

    def stop(self) -> None:
        """SIGTERM: redis writes its append-only file and exits; clients see a refused port."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None


@pytest.fixture
def stoppable_redis(tmp_path: Path) -> Iterator[StoppableRedis]:
    server = StoppableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
