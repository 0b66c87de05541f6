"""What the local JVM services (the Kafka broker, the Schema Registry) share: the cache of what
was fetched from Maven Central, a lock so that concurrent fetchers take turns, the `java`
launcher, loopback ports and log tails."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"


def cache_root() -> Path:
    """`$KLAVIYO_STREAM_CACHE` or `~/.cache/klaviyo-stream`: outside any work tree."""
    root = os.environ.get("KLAVIYO_STREAM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "klaviyo-stream"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path`, so concurrent resolvers take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def java() -> str | None:
    """Path of the `java` launcher: `$JAVA_HOME/bin/java` or the one on PATH (None: none)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(text: str, lines: int = 40) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.strip().splitlines()[-lines:])
