"""What the local JVM services (the Kafka broker, the Schema Registry) share: the cache of what
was fetched from Maven Central, a lock so that concurrent fetchers take turns, the `java`
launcher, loopback ports, and the child process itself (`JvmProcess`: started in its own
session, its log, a stop that never orphans a JVM; `run_until_signal` for the commands)."""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from stream.core.errors import StreamError

HOST = "127.0.0.1"
Announce = Callable[[str], None]


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


class JvmProcess:
    """A `java` child process whose files live in `work_dir`, its output appended to
    `work_dir/<log_name>`. A temporary work dir (made when none is given) is removed by
    `stop()`; `with` starts and stops it; an interpreter exiting with it still up kills it, so
    no JVM is orphaned. Subclasses implement `start()` and raise `error`."""

    error: type[StreamError] = StreamError
    log_name = "process.log"
    temp_prefix = "localjvm-"
    what = "the process"  # in messages: "Kafka broker", "the registry"

    def __init__(self, work_dir: Path | None) -> None:
        self._given_work_dir = work_dir
        self._work_dir: Path | None = work_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def work_dir(self) -> Path | None:
        """Directory holding its settings, data and log."""
        return self._work_dir

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM, if any."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_running(self) -> bool:
        """Whether the process is alive (it may still be starting)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120) -> str:
        """Launch it and wait until it serves; what clients connect to."""
        raise NotImplementedError

    def stop(self, timeout: float = 30) -> None:
        """Stop it (SIGTERM, wait `timeout`, then SIGKILL); remove a temp work dir."""
        self._stop_process(timeout)
        if self._given_work_dir is None and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log; the last ERROR line first when it is further up, since a
        stack trace can bury it."""
        if self._work_dir is None:
            return ""
        log = self._work_dir / self.log_name
        text = log.read_text(errors="replace") if log.is_file() else ""
        last = tail(text, lines)
        errors = [line for line in text.splitlines() if " ERROR " in line]
        if errors and errors[-1] not in last:
            return f"{errors[-1]}\n...\n{last}"
        return last

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # __exit__ will not run: do not leave a temp dir behind
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # for subclasses ------------------------------------------------------------------------

    def _make_work_dir(self) -> bool:
        """Make the work dir (a temporary one when none was given); whether it is new temp."""
        fresh = self._work_dir is None
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix=self.temp_prefix))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return fresh

    def _spawn(self, cmd: list[str]) -> int:
        """Start `cmd` in the work dir, in its own session (a Ctrl-C in the terminal reaches
        us, and we stop it in order); the log's size before it (where its output starts)."""
        assert self._work_dir is not None
        log_path = self._work_dir / self.log_name
        offset = log_path.stat().st_size if log_path.is_file() else 0
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self._kill_at_exit)
        return offset

    def _check_alive(self, deadline: float, timeout: float) -> None:
        """Raise `error` (with the log's tail) if it died or `deadline` passed."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise self.error(
                f"{self.what} exited during start-up (exit {code}); log tail:\n" + self.log_tail()
            )
        if time.monotonic() > deadline:
            raise self.error(
                f"{self.what} did not answer within {timeout:.0f} s; log tail:\n" + self.log_tail()
            )

    def _stop_process(self, timeout: float) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            atexit.unregister(self._kill_at_exit)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired as exc:
                    raise self.error(f"{self.what} pid {proc.pid} survived SIGKILL") from exc
        else:
            proc.wait()

    def _kill_at_exit(self) -> None:
        """Last resort if the interpreter exits with it still up: do not orphan a JVM."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._given_work_dir is None and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)


def run_until_signal(process: JvmProcess, ready: Callable[[], str], announce: Announce) -> None:
    """Start `process`, `announce(ready())`, and keep it up until SIGINT or SIGTERM; then stop
    it cleanly (what `klaviyo-stream kafka` and `registry` do)."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        process.start()
        announce(ready())
        while not stop.wait(1.0):
            if not process.is_running():
                raise process.error(
                    f"{process.what} exited unexpectedly; log tail:\n" + process.log_tail()
                )
    finally:
        process.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
